"""Attach a BPF tracepoint program from its fd (perf_event_open + PERF_EVENT_IOC_SET_BPF,
kernel/perf_event.py says why the daemon attaches itself and how long it lasts).
"""

from __future__ import annotations

import errno
from pathlib import Path

from retinad.kernel import perf_event

TRACEFS_DIRS = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))

PERF_TYPE_TRACEPOINT = 2


def event_dir(category: str, event: str) -> Path | None:
    """The tracefs directory of a tracepoint, or None if no mounted tracefs has it (or
    none lets this process look: the caller tells "denied" from "absent" with
    ``features.tracefs_denied``, as it did when bcc answered this question)."""
    for base in TRACEFS_DIRS:
        d = base / "events" / category / event
        try:
            if d.is_dir():
                return d
        except PermissionError:
            continue
    return None


def tracepoint_exists(category: str, event: str) -> bool:
    """Whether the tracepoint is listed under a mounted tracefs."""
    return event_dir(category, event) is not None


def tracepoint_id(category: str, event: str) -> int:
    """The tracepoint's id (tracefs events/<category>/<event>/id), the perf event config."""
    d = event_dir(category, event)
    if d is None:
        raise OSError(errno.ENOENT, f"tracepoint {category}:{event} not found under tracefs")
    return int((d / "id").read_text())


def attach(prog_fd: int, category: str, event: str) -> int:
    """Run ``prog_fd`` on every hit of ``category:event``; returns the perf-event fd that
    holds the attachment (close it with ``detach``). Raises OSError with the errno."""
    config = tracepoint_id(category, event)
    event_attr = perf_event.attr(PERF_TYPE_TRACEPOINT, config)
    return perf_event.open_with_program(event_attr, prog_fd, f"{category}:{event}")


def detach(perf_fd: int) -> None:
    """Disable and close the event: the program stops running on the tracepoint."""
    perf_event.close_event(perf_fd)
