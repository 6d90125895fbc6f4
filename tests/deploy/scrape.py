"""Reading a retinad under test over HTTP, tolerant of its start-up."""

from __future__ import annotations

import http.client

from tests.daemon_proc import try_get


def serving(port: int) -> bool:
    """/metrics on 127.0.0.1:``port`` answers in full. While bcc compiles at start-up on a
    loaded machine a response was once cut short (IncompleteRead): not serving yet."""
    try:
        return try_get(f"http://127.0.0.1:{port}/metrics") is not None
    except http.client.HTTPException:
        return False
