"""perf_event_open(2) with a BPF program attached: the one mechanism under tracepoints
(kernel/tracepoint.py) and kprobes (kernel/kprobe.py).

The daemon makes these attachments itself rather than taking bcc's: bcc attaches in the
compile child, and its exit handler disables and closes the perf events it made, so an
event handed over from the child would stop running the program under the parent. An
attachment lives as long as the perf-event fd returned here: closing it detaches, and so
does the process exiting, even on kill -9 (nothing is left behind to count twice).

One event on CPU 0 (pid -1) suffices: a BPF program on a tracepoint or a kprobe runs on
every CPU that hits it (the program hangs off the probe, not off the event's CPU), which
is what bcc and libbpf do.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import platform

_SYS_PERF_EVENT_OPEN = {"x86_64": 298, "aarch64": 241, "riscv64": 241, "ppc64le": 319,
                        "s390x": 331}  # fmt: skip
PERF_SAMPLE_RAW = 1 << 10
PERF_FLAG_FD_CLOEXEC = 1 << 3
PERF_EVENT_IOC_ENABLE = 0x2400
PERF_EVENT_IOC_DISABLE = 0x2401
PERF_EVENT_IOC_SET_BPF = 0x40042408

_libc = ctypes.CDLL(None, use_errno=True)


class PerfEventAttr(ctypes.Structure):
    """struct perf_event_attr, PERF_ATTR_SIZE_VER7 (128 bytes; include/uapi/linux/
    perf_event.h), named up to config2; the bit fields after read_format are one u64 and
    the tail is zero (an older kernel accepts a larger attr whose unknown tail is zero).
    The one definition: tracepoints, kprobes and the perf event reader (perfbuf.py).

    For the kprobe PMU, config1 is ``kprobe_func`` (a pointer to the function's name) and
    config2 ``probe_offset``; for a tracepoint, config is the tracepoint's id.
    """

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
        ("_rest", ctypes.c_uint8 * 56),
    ]


assert ctypes.sizeof(PerfEventAttr) == 128


def attr(type_: int, config: int, config1: int = 0, config2: int = 0) -> PerfEventAttr:
    """A counting event that fires on every hit, as bcc and libbpf open them."""
    return PerfEventAttr(type=type_, size=ctypes.sizeof(PerfEventAttr), config=config,
                         sample_period=1, sample_type=PERF_SAMPLE_RAW, wakeup_events=1,
                         config1=config1, config2=config2)  # fmt: skip


def open_with_program(event: PerfEventAttr, prog_fd: int, what: str) -> int:
    """Open ``event``, run ``prog_fd`` on it and enable it; returns the perf-event fd that
    holds the attachment (``close_event`` detaches). Raises OSError with the errno and
    ``what`` (the probe's name) in the message; nothing is left open on failure."""
    nr = _SYS_PERF_EVENT_OPEN.get(platform.machine())
    if nr is None:
        raise OSError(errno.ENOSYS, f"perf_event_open number unknown for {platform.machine()}")
    fd = int(_libc.syscall(nr, ctypes.byref(event), -1, 0, -1, PERF_FLAG_FD_CLOEXEC))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"perf_event_open({what}): {os.strerror(err)}")
    try:
        fcntl.ioctl(fd, PERF_EVENT_IOC_SET_BPF, prog_fd)
        fcntl.ioctl(fd, PERF_EVENT_IOC_ENABLE, 0)
    except OSError:
        os.close(fd)
        raise
    return fd


def close_event(perf_fd: int) -> None:
    """Disable and close the event: the program stops running on the probe."""
    try:
        fcntl.ioctl(perf_fd, PERF_EVENT_IOC_DISABLE, 0)
    finally:
        os.close(perf_fd)
