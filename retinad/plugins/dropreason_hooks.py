"""dropreason's fallback source: Microsoft Retina's hook points (bpf/dropreason_hooks.c).

Chosen by retinad.kernel.features.dropreason_source: on kernels whose skb:kfree_skb has no
``reason`` field (before 5.17), or when ``[dropreason] source = "hooks"``. It fills the same
drop_counts map (struct drop_key) with Retina's category numbers as the reason, so the
plugin's reading, naming, ledger and metric families are the tracepoint's; only the
compile, the attach and the names differ, and they live here.

Hooks are kprobe/kretprobe pairs. A hook whose function is absent (nf_nat_inet_fn and
__nf_conntrack_confirm live in modules: nf_nat, nf_conntrack) is skipped and named in the
log and status, as Retina does; no hook at all is an AttachError.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from retinad.errors import AttachError, KernelError
from retinad.kernel.abi import HOOK_REASON_NAMES
from retinad.kernel.btf import Btf
from retinad.kernel.dropreasons import DropReasonNames
from retinad.kernel.loader import PROG_KPROBE
from retinad.kernel.loader import load as load_program

SOURCE_FILE = "dropreason_hooks.c"


@dataclass(frozen=True)
class Hook:
    """One hook point: the kernel function, its entry and return handlers."""

    function: str
    entry: str | None
    ret: str
    reason: str


HOOKS: tuple[Hook, ...] = (
    Hook("nf_hook_slow", "on_nf_hook_slow", "on_nf_hook_slow_ret", "IPTABLE_RULE_DROP"),
    Hook("nf_nat_inet_fn", "on_nf_nat_inet_fn", "on_nf_nat_inet_fn_ret", "IPTABLE_NAT_DROP"),
    Hook("tcp_v4_connect", None, "on_tcp_v4_connect_ret", "TCP_CONNECT_BASIC"),
    Hook("inet_csk_accept", "on_inet_csk_accept", "on_inet_csk_accept_ret", "TCP_ACCEPT_BASIC"),
    Hook(
        "__nf_conntrack_confirm",
        "on_nf_conntrack_confirm",
        "on_nf_conntrack_confirm_ret",
        "CONNTRACK_ADD_DROP",
    ),
)

NAMES = DropReasonNames(core=MappingProxyType(dict(HOOK_REASON_NAMES)))
"""The fallback's reason names: Retina's, the same in both namings."""


def kernel_defines(btf: Btf, skb_offsets: dict[str, int]) -> dict[str, int]:
    """The -D defines of bpf/dropreason_hooks.c: the tracepoint program's struct sk_buff
    offsets, skb->protocol, and where inet_csk_accept keeps its error (6.10+ passes a
    struct proto_accept_arg; before, an int * as the third argument)."""
    proto = btf.member("sk_buff", "protocol")
    if proto is None or proto.size != 2:
        got = "absent" if proto is None else f"{proto.size} bytes"
        raise KernelError(f"{btf.source}: struct sk_buff.protocol: expected 2 bytes, {got}")
    err = btf.member("proto_accept_arg", "err")
    defines = dict(skb_offsets)
    defines["RETINAD_SKB_OFF_PROTOCOL"] = proto.offset
    defines["RETINAD_ACCEPT_ARG_ERR_OFF"] = -1 if err is None else err.offset
    return defines


@dataclass
class Attached:
    """What attach() hooked, for the log and status."""

    hooked: list[str]
    skipped: dict[str, str]

    def describe(self) -> str:
        text = "kprobes on " + ", ".join(self.hooked)
        if self.skipped:
            text += "; not hooked: " + ", ".join(f"{f} ({why})" for f, why in self.skipped.items())
        return text


def build(
    bpf_dir: Path,
    defines: dict[str, int],
    prepare: Callable[[Any], None],
    logger: logging.Logger,
) -> tuple[Any, Attached]:
    """Compile bpf/dropreason_hooks.c in the compile child (kernel/loader.py), run
    ``prepare`` on it (the plugin's overflow key), then attach every hook this kernel has
    from this process (kernel/kprobe.py). Raises AttachError when none attaches."""
    programs = {name: PROG_KPROBE for h in HOOKS for name in (h.entry, h.ret) if name is not None}
    bpf = load_program(bpf_dir, SOURCE_FILE, defines, programs)
    try:
        prepare(bpf)
        attached = _attach(bpf)
    except Exception:
        bpf.cleanup()
        raise
    for function, why in attached.skipped.items():
        logger.warning("dropreason: hook %s not attached: %s", function, why)
    return bpf, attached


def _attach(bpf: Any) -> Attached:
    hooked: list[str] = []
    skipped: dict[str, str] = {}
    for hook in HOOKS:
        try:
            # return probe first: an entry without its return would park calls forever
            bpf.attach_kretprobe(event=hook.function.encode(), fn_name=hook.ret.encode())
            if hook.entry is not None:
                try:
                    bpf.attach_kprobe(event=hook.function.encode(), fn_name=hook.entry.encode())
                except Exception:
                    with contextlib.suppress(Exception):
                        bpf.detach_kretprobe(event=hook.function.encode())
                    raise
        except Exception as err:
            skipped[hook.function] = str(err).strip() or type(err).__name__
            continue
        hooked.append(hook.function)
    if not hooked:
        detail = "; ".join(f"{f}: {why}" for f, why in skipped.items())
        raise AttachError(f"dropreason hooks: no hook point attached ({detail})", reason="attach")
    return Attached(hooked, skipped)
