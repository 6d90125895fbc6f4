"""Attach a BPF tracepoint program from its fd: perf_event_open + PERF_EVENT_IOC_SET_BPF.

The daemon makes this attachment itself rather than taking bcc's: bcc attaches in the
compile child, and its exit handler disables and closes the perf events it made, so an
event handed over from the child would stop counting under the parent. The attachment
lives as long as the perf-event fd this module returns: closing it detaches, and so does
the process exiting, even on kill -9 (nothing is left behind to count twice).

One event on CPU 0 suffices: a BPF program on a tracepoint runs on every CPU that hits it
(the program hangs off the tracepoint, not off the event's CPU), which is what bcc does.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import platform
from pathlib import Path

TRACEFS_DIRS = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))

_SYS_PERF_EVENT_OPEN = {"x86_64": 298, "aarch64": 241, "riscv64": 241, "ppc64le": 319,
                        "s390x": 331}  # fmt: skip
PERF_TYPE_TRACEPOINT = 2
PERF_SAMPLE_RAW = 1 << 10
PERF_FLAG_FD_CLOEXEC = 1 << 3
PERF_EVENT_IOC_ENABLE = 0x2400
PERF_EVENT_IOC_DISABLE = 0x2401
PERF_EVENT_IOC_SET_BPF = 0x40042408

_libc = ctypes.CDLL(None, use_errno=True)


class _PerfEventAttr(ctypes.Structure):
    """struct perf_event_attr up to config2 (PERF_ATTR_SIZE_VER1 and on, zero-padded)."""

    _fields_ = [
        ("type", ctypes.c_uint32),
        ("size", ctypes.c_uint32),
        ("config", ctypes.c_uint64),
        ("sample_period", ctypes.c_uint64),
        ("sample_type", ctypes.c_uint64),
        ("read_format", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
        ("wakeup_events", ctypes.c_uint32),
        ("bp_type", ctypes.c_uint32),
        ("config1", ctypes.c_uint64),
        ("config2", ctypes.c_uint64),
        ("_rest", ctypes.c_uint8 * 64),
    ]


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
    nr = _SYS_PERF_EVENT_OPEN.get(platform.machine())
    if nr is None:
        raise OSError(errno.ENOSYS, f"perf_event_open number unknown for {platform.machine()}")
    attr = _PerfEventAttr(type=PERF_TYPE_TRACEPOINT, size=ctypes.sizeof(_PerfEventAttr),
                          config=tracepoint_id(category, event), sample_period=1,
                          sample_type=PERF_SAMPLE_RAW, wakeup_events=1)  # fmt: skip
    fd = int(_libc.syscall(nr, ctypes.byref(attr), -1, 0, -1, PERF_FLAG_FD_CLOEXEC))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"perf_event_open({category}:{event}): {os.strerror(err)}")
    try:
        fcntl.ioctl(fd, PERF_EVENT_IOC_SET_BPF, prog_fd)
        fcntl.ioctl(fd, PERF_EVENT_IOC_ENABLE, 0)
    except OSError:
        os.close(fd)
        raise
    return fd


def detach(perf_fd: int) -> None:
    """Disable and close the event: the program stops running on the tracepoint."""
    try:
        fcntl.ioctl(perf_fd, PERF_EVENT_IOC_DISABLE, 0)
    finally:
        os.close(perf_fd)
