"""cli.cap_malloc_arenas: applied by glibc's mallopt, and MALLOC_ARENA_MAX wins if set."""

from __future__ import annotations

import os
import subprocess
import sys

SNIPPET = "from retinad.cli import cap_malloc_arenas; print(cap_malloc_arenas())"


def run(env_extra: dict[str, str]) -> str:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"} | env_extra
    out = subprocess.run([sys.executable, "-c", SNIPPET], env=env, capture_output=True,
                         text=True, check=True, timeout=60)  # fmt: skip
    return out.stdout.strip()


def test_the_cap_is_applied_through_mallopt() -> None:
    assert run({}) == "True"


def test_an_operators_malloc_arena_max_is_left_to_glibc() -> None:
    assert run({"MALLOC_ARENA_MAX": "4"}) == "False"
