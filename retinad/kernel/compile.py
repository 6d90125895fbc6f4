"""Compile and load the BPF C in bpf/ with bcc.

bcc compiles at start-up against the running kernel's headers (Retina also compiles on
the node). Options go in as ``-D`` cflags; the C is never edited or generated. bcc is
imported here only, lazily, so ``retinad check-config`` and the exporter work on a host
without it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from retinad.errors import CompileError

_INSTALLED_BPF_DIR = Path("/usr/share/retinad/bpf")


def find_bpf_dir() -> Path:
    """Where the BPF sources are: $RETINAD_BPF_DIR, the checkout's bpf/, or the install path."""
    env = os.environ.get("RETINAD_BPF_DIR")
    if env:
        return Path(env).resolve()  # bcc resolves -I against its own cwd
    checkout = Path(__file__).resolve().parents[2] / "bpf"
    if (checkout / "retinad.h").exists():
        return checkout
    return _INSTALLED_BPF_DIR


def compile_program(
    bpf_dir: Path, filename: str, defines: Mapping[str, int | str] | None = None
) -> Any:
    """Compile ``bpf_dir/filename`` with bcc and return the ``bcc.BPF`` object.

    Raises CompileError naming the file and bcc's own message (which includes the clang
    diagnostics or the verifier log for the failing program).
    """
    bpf_dir = bpf_dir.resolve()
    src = bpf_dir / filename
    if not src.is_file():
        raise CompileError(f"{src}: BPF source not found (is [bpf] installed?)")
    try:
        from bcc import BPF
    except ImportError as err:
        raise CompileError(
            "bcc's Python module is missing: install python3-bpfcc (Debian/Ubuntu) or "
            "python3-bcc (RHEL/Fedora)"
        ) from err
    cflags = [f"-I{bpf_dir}", "-Wno-macro-redefined"]
    cflags += [f"-D{k}={v}" for k, v in (defines or {}).items()]
    try:
        return BPF(src_file=str(src).encode(), cflags=cflags)
    except Exception as err:
        raise load_failure(src, err) from err


def load_failure(src: Path, err: Exception) -> CompileError:
    """The error to report when bcc fails on ``src``, classified by its cause.

    bcc turns an EPERM from bpf() (a map or program load without CAP_BPF/CAP_PERFMON)
    into the same "Failed to compile BPF module" as a clang error, printing the EPERM only
    to stderr; telling the operator to look at the C would send them the wrong way. So
    the process's capabilities are asked first: lacking ones are the cause, named with
    how to grant them. Call it in the process that ran bcc (it reads that process's
    capabilities).
    """
    from retinad.kernel.features import bpf_privilege_problem

    problem = bpf_privilege_problem()
    if problem is not None:
        return CompileError(f"{src}: cannot load BPF programs: {problem}")
    return CompileError(f"{src}: bcc could not compile or load it: {err}")
