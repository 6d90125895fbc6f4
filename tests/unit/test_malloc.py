"""daemon.malloc.tune_malloc: glibc's dynamic mmap threshold is off, arenas are capped, and
an operator's environment wins (why: retinad/daemon/malloc.py, docs/PERFORMANCE.md).

Each case runs in a fresh interpreter: mallopt settings are per process and cannot be
undone, and the allocation pattern must start from glibc's defaults.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

# mallinfo2().hblks counts the blocks glibc has mmapped; one that goes to the brk heap
# instead leaves it unchanged. A 4 MiB block is always mmapped (over the default 128 KiB
# threshold); freeing it is what makes glibc's dynamic threshold rise to 4 MiB.
PROBE = """
import ctypes, json, sys
from retinad.daemon.malloc import tune_malloc
applied = tune_malloc() if sys.argv[1] == "tuned" else {}

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in (
        "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split())]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
big = bytearray(4 << 20)
del big
before = libc.mallinfo2().hblks
buf = bytearray(512 << 10)  # like a netlink dump buffer or a /metrics page
during = libc.mallinfo2().hblks
del buf
after = libc.mallinfo2().hblks
print(json.dumps({"applied": applied, "mmapped": during - before, "returned": during - after}))
"""


def probe(mode: str, env_extra: dict[str, str] | None = None) -> dict[str, object]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"
    }
    env |= env_extra or {}
    out = subprocess.run([sys.executable, "-c", PROBE, mode], env=env, capture_output=True,
                         text=True, timeout=60, check=False)  # fmt: skip
    if "mallinfo2" in out.stderr:
        pytest.skip("this libc has no mallinfo2 (glibc < 2.33)")
    assert out.returncode == 0, out.stderr
    result: dict[str, object] = json.loads(out.stdout)
    return result


def test_all_three_settings_are_applied_through_mallopt() -> None:
    assert probe("tuned")["applied"] == {
        "arena_max": 2,
        "mmap_threshold": 128 * 1024,
        "trim_threshold": 128 * 1024,
    }


def test_glibc_alone_moves_a_large_block_to_the_heap_after_a_larger_one_is_freed() -> None:
    """The mechanism behind the soak's growth, on this glibc: untuned, the 512 KiB block
    is not mmapped (the threshold rose to 4 MiB), so its pages stay in the heap."""
    assert probe("untuned")["mmapped"] == 0


def test_tuned_a_large_block_is_mmapped_and_given_back_when_freed() -> None:
    result = probe("tuned")
    assert result["mmapped"] == 1
    assert result["returned"] == 1


def test_an_operators_environment_wins_per_setting() -> None:
    assert probe("tuned", {"MALLOC_ARENA_MAX": "4"})["applied"] == {
        "mmap_threshold": 128 * 1024,
        "trim_threshold": 128 * 1024,
    }
    tunables = {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=65536"}
    assert probe("tuned", tunables)["applied"] == {"arena_max": 2, "trim_threshold": 128 * 1024}
