"""Attach a BPF kprobe or kretprobe program from its fd through the kprobe PMU.

Why the PMU (``/sys/bus/event_source/devices/kprobe``, 4.17+) and not ``kprobe_events``:
a probe made through perf_event_open belongs to its fd. It vanishes when the fd is
closed or the process dies, even on kill -9, so a crashed daemon leaves no
``p:retinad_...`` line in the host's tracefs for an operator to find and remove. libbpf
prefers it for the same reason; every kernel this project supports (5.10+) has it.

The kernel resolves the function by name when the event is opened: an absent function
(a module not loaded, a symbol renamed) is ENOENT here, which the dropreason fallback
reports per hook point and skips, as Retina does.
"""

from __future__ import annotations

import ctypes
import errno
from pathlib import Path

from retinad.kernel import perf_event

PMU_DIR = Path("/sys/bus/event_source/devices/kprobe")


def available(pmu_dir: Path = PMU_DIR) -> bool:
    """Whether this kernel has the kprobe PMU (CONFIG_KPROBES with perf events)."""
    return (pmu_dir / "type").is_file()


def _pmu_type(pmu_dir: Path) -> int:
    try:
        return int((pmu_dir / "type").read_text())
    except FileNotFoundError:
        raise OSError(errno.ENOENT, f"{pmu_dir}/type: no kprobe PMU (CONFIG_KPROBES)") from None


def _retprobe_bit(pmu_dir: Path) -> int:
    """The config bit that makes a kretprobe: format/retprobe reads "config:0"."""
    text = (pmu_dir / "format" / "retprobe").read_text().strip()
    field, _, bit = text.partition(":")
    if field != "config" or not bit.isdigit():
        raise OSError(errno.EINVAL, f"{pmu_dir}/format/retprobe: unexpected {text!r}")
    return int(bit)


def attach(prog_fd: int, function: str, *, retprobe: bool = False, pmu_dir: Path = PMU_DIR) -> int:
    """Run ``prog_fd`` on entry to (or, with ``retprobe``, return from) kernel function
    ``function``; returns the perf-event fd that holds the probe (``detach`` removes it).
    Raises OSError with the errno: ENOENT for a function this kernel does not have."""
    name = ctypes.create_string_buffer(function.encode())
    config = 1 << _retprobe_bit(pmu_dir) if retprobe else 0
    event = perf_event.attr(_pmu_type(pmu_dir), config, config1=ctypes.addressof(name))
    what = ("kretprobe " if retprobe else "kprobe ") + function
    # ``name`` stays alive across the call: the kernel copies the string while opening.
    return perf_event.open_with_program(event, prog_fd, what)


def detach(perf_fd: int) -> None:
    """Close the probe's event: the kernel removes the probe with it."""
    perf_event.close_event(perf_fd)
