"""glibc malloc settings for a long-lived daemon, applied before any thread starts.

Why: what grew in the soak with container churn (scripts/rss-soak.py, ~1.3-3 MiB/min,
docs/PERFORMANCE.md) was not Python objects: tracemalloc snapshots a minute apart showed
the live Python heap flat (under 2 MiB traced growth while RSS rose 15 MiB), and a
``malloc_trim(0)`` inside the daemon took RSS from 76.1 to 63.7 MiB. It was freed memory
that glibc kept, because of its *dynamic mmap threshold*: when a large block that came
from mmap is freed, glibc raises the threshold to that size (up to 32 MiB) and the trim
threshold to twice it. After the first large buffers (netlink dumps, Docker inspect
bodies, a /metrics page) every block of that size comes from the brk heap instead, and
the heap only shrinks from the top, so the freed middle stays resident, more of it with
every cycle.

Fixed thresholds turn the adjustment off (setting either one through ``mallopt`` does):
blocks of 128 KiB and more are mmapped and returned to the kernel when freed, and the
heap is trimmed once 128 KiB are free at its top, which is glibc's own default before it
adjusts. Measured: the same soak with these settings stays flat (docs/PERFORMANCE.md).

The arena cap: glibc gives threads their own arenas (up to 8 per core), each keeping freed
memory of its own. The daemon runs a dozen threads (netlink watchers, sweepers, resolver
watches, HTTP); two arenas took start-up RSS from 80-84 MiB to 51 MiB. Python's own
allocator serves small objects anyway, so contention on two arenas is not felt.

An operator's environment wins: ``MALLOC_ARENA_MAX``, ``MALLOC_MMAP_THRESHOLD_``,
``MALLOC_TRIM_THRESHOLD_`` or the same keys in ``GLIBC_TUNABLES`` leave that setting to
glibc. Where mallopt is absent (not glibc) nothing is applied.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Mapping

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
"""glibc's mallopt() parameter numbers (malloc.h)."""

ARENAS = 2
MMAP_THRESHOLD = 128 * 1024
TRIM_THRESHOLD = 128 * 1024

# name -> (mallopt parameter, value, environment variable, GLIBC_TUNABLES key)
SETTINGS: dict[str, tuple[int, int, str, str]] = {
    "arena_max": (M_ARENA_MAX, ARENAS, "MALLOC_ARENA_MAX", "glibc.malloc.arena_max"),
    "mmap_threshold": (
        M_MMAP_THRESHOLD,
        MMAP_THRESHOLD,
        "MALLOC_MMAP_THRESHOLD_",
        "glibc.malloc.mmap_threshold",
    ),
    "trim_threshold": (
        M_TRIM_THRESHOLD,
        TRIM_THRESHOLD,
        "MALLOC_TRIM_THRESHOLD_",
        "glibc.malloc.trim_threshold",
    ),
}


def tune_malloc(environ: Mapping[str, str] | None = None) -> dict[str, int]:
    """Apply SETTINGS through mallopt, except those the environment sets; return what was
    applied (name -> value), empty where mallopt is absent."""
    env = os.environ if environ is None else environ
    tunables = env.get("GLIBC_TUNABLES", "")
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return {}
    applied: dict[str, int] = {}
    for name, (param, value, variable, tunable) in SETTINGS.items():
        if env.get(variable) or tunable + "=" in tunables:
            continue
        if mallopt(param, value):
            applied[name] = value
    return applied
