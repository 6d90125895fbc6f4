"""dropreason's BTF read (reason names, sk_buff offsets) in a short-lived child process.

Why: parsing vmlinux BTF builds ~50 MiB of short-lived Python objects. In the daemon it
was the start-up peak (VmHWM ~97 MiB against 49 MiB without dropreason) and left 4-9 MiB
behind for good, because other threads allocate long-lived objects among the parse's and
pin the allocator's arenas (docs/PERFORMANCE.md). What the daemon keeps from it is small:
three int -> name tables and a dozen -D defines, sent back as JSON. The child is the same
interpreter and package as the compile child (kernel/loader.py's argv, so ``python3 -I``
packages work), needs no privilege beyond reading /sys/kernel/btf, and exits normally.

Errors keep their text: a KernelError in the child (no such file, no enum
skb_drop_reason, a resized sk_buff member) comes back as its message and is raised here as
KernelError with it; a child that dies is reported with its stderr.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import MappingProxyType
from typing import Any

from retinad.errors import KernelError
from retinad.kernel.dropreasons import DropReasonNames
from retinad.kernel.loader import python_argv

TIMEOUT_SECONDS = 300.0
TABLES = ("core", "subsystems", "subsystem_reasons")


def read(
    btf_path: Path, module_btf_dir: Path | None, *, hooks: bool = False
) -> tuple[DropReasonNames, dict[str, int]]:
    """The kernel's drop reason names and dropreason.c's defines, read in a child; with
    ``hooks``, the fallback's names (Retina's, fixed) and dropreason_hooks.c's defines."""
    request = {
        "btf": str(btf_path),
        "modules": str(module_btf_dir) if module_btf_dir else None,
        "hooks": hooks,
    }
    code = "from retinad.plugins.dropreason_btf import child_main; child_main()"
    try:
        proc = subprocess.run(python_argv(code), input=json.dumps(request), capture_output=True,
                              text=True, timeout=TIMEOUT_SECONDS, check=False)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as err:
        raise KernelError(f"{btf_path}: the BTF reader child failed: {err}") from err
    try:
        answer: dict[str, Any] = json.loads(proc.stdout)
    except ValueError:
        tail = proc.stderr.strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
        raise KernelError(f"{btf_path}: the BTF reader child failed: {tail[0]}") from None
    if not answer.get("ok"):
        raise KernelError(str(answer.get("error")))
    defines = {str(k): int(v) for k, v in answer["defines"].items()}
    if hooks:
        from retinad.plugins import dropreason_hooks

        return dropreason_hooks.NAMES, defines
    tables = {t: MappingProxyType({int(k): str(v) for k, v in answer[t].items()}) for t in TABLES}
    return DropReasonNames(**tables), defines


def child_main() -> None:
    """The child: a request on stdin, one JSON answer on stdout."""
    from retinad.kernel.btf import Btf
    from retinad.kernel.dropreasons import load_names
    from retinad.plugins import dropreason_hooks
    from retinad.plugins.dropreason import kernel_defines, skb_offsets

    request = json.loads(sys.stdin.read())
    modules = Path(request["modules"]) if request["modules"] else None
    try:
        btf = Btf.from_file(Path(request["btf"]))
        if request.get("hooks"):
            defines = dropreason_hooks.kernel_defines(btf, skb_offsets(btf))
            json.dump({"ok": True, "defines": defines}, sys.stdout)
            return
        names = load_names(btf, modules)
        defines = kernel_defines(btf, names)
    except KernelError as err:
        json.dump({"ok": False, "error": str(err)}, sys.stdout)
        return
    answer: dict[str, Any] = {"ok": True, "defines": defines}
    for t in TABLES:
        answer[t] = {str(k): v for k, v in getattr(names, t).items()}
    json.dump(answer, sys.stdout)
