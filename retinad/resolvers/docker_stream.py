"""Talking to dockerd with every read bounded: the connect probe, the engine's clock, and
the event stream read in windows that dockerd itself ends.

Why windows: dockerd's event stream is silent while nothing happens, so a read timeout on
one endless stream cannot tell an idle engine from a dead connection. A request with
``until`` a little ahead is ended by dockerd at ``until`` (moby's getEvents returns on its
until timer), so a live window is never silent past it, and a read timeout beyond it can
only fire on a connection that died or an engine that stopped answering.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import docker.utils
import requests
import urllib3
from docker.types.daemon import CancellableStream

from retinad.resolvers.docker_naming import as_str

API_TIMEOUT = 10.0
"""Default seconds for one call, and the length of an event-stream window."""

WINDOW_SLACK = 0.5
"""Seconds a window may end before its ``until`` (clock error) and still count as ended
by dockerd; the next window starts this much earlier, replaying rather than missing."""


class DaemonClock:
    """dockerd's clock, read once per session from ``/info`` and followed locally, so the
    ``since``/``until`` of each window mean the same instants to both sides."""

    def __init__(self, info: Mapping[str, Any]) -> None:
        local = time.time()
        self.start = float(daemon_since(info))
        self._offset = (daemon_time(info) or local) - local

    def now(self) -> float:
        return time.time() + self._offset


@dataclass(frozen=True)
class EventWindow:
    """One event-stream response, ``since`` .. ``until``. dockerd ends such a response
    itself at ``until`` (moby's getEvents stops at the until timer), so a live stream is
    never silent past ``until``; reading with a timeout beyond it makes a half-open
    connection, or an engine that stopped answering, a timeout instead of a forever."""

    stream: Any
    until: float


def daemon_time(info: Mapping[str, Any]) -> float | None:
    """The daemon's clock as ``/info`` reported it (seconds since the epoch), or None."""
    try:
        return datetime.fromisoformat(as_str(info.get("SystemTime"))).timestamp()
    except ValueError:
        return None


def daemon_since(info: Mapping[str, Any]) -> int:
    """A ``since`` for the event stream: the daemon's clock (from ``/info``), floored to
    the second so it is never later than now; the local clock if the daemon's is unreadable.
    An early ``since`` only replays a few events, which re-inspecting makes harmless."""
    now = daemon_time(info)
    return int(now) if now is not None else int(time.time()) - 1


def probe(host: str, timeout: float) -> None:
    """For a ``unix://`` host, raise OSError unless something accepts a connection there.

    An absent engine then costs one failed connect that leaks nothing: the SDK's unix
    adapter leaves the socket of a failed connect to the garbage collector (a
    ResourceWarning per retry). Other schemes go through urllib3, which closes it.
    """
    if not host.startswith("unix://"):
        return
    path = host[len("unix://") :]
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except OSError as err:
            reason = (err.strerror or str(err)).lower()
            raise ConnectionError(err.errno, f"cannot connect to {path}: {reason}") from None


def is_timeout(err: BaseException | None) -> bool:
    seen = 0
    while err is not None and seen < 10:
        if isinstance(
            err,
            TimeoutError | requests.exceptions.Timeout | urllib3.exceptions.TimeoutError,
        ):
            return True
        if "timed out" in str(err).lower():  # the SDK wraps some in DockerException text
            return True
        err = err.__cause__ or err.__context__
        seen += 1
    return False


def close_quietly(*things: Any) -> None:
    """Close the event stream (shuts its socket down, ending a blocked read) and the client."""
    for thing in things:
        if thing is None:
            continue
        # Already closed, or half-open: either way nothing is left to release.
        with contextlib.suppress(Exception):
            thing.close()


def open_window(
    client: Any, clock: DaemonClock, since: float, length: float, filters: Mapping[str, Any]
) -> EventWindow:
    """The event stream from ``since`` until ``length`` seconds from now by dockerd's clock.

    The SDK's ``events()`` hard-codes ``timeout=None`` for the stream, so a dead connection
    would block its read forever; this is the same three SDK calls with a read timeout
    (twice the window) that a live window never reaches.
    """
    until = clock.now() + length
    params = {
        "since": f"{since:.3f}",
        "until": f"{until:.3f}",
        "filters": docker.utils.convert_filters(dict(filters)),
    }
    response = client._get(client._url("/events"), params=params, stream=True, timeout=2 * length)
    return EventWindow(
        CancellableStream(client._stream_helper(response, decode=True), response), until
    )
