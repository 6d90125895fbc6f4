"""Name a raw drop reason number the way the running kernel spells it.

The BPF program stores ``enum skb_drop_reason`` values raw; this module turns them into
label values. Since 6.4 a reason is ``subsystem << 16 | code``: subsystem 0 is the core
enum; others (``enum skb_drop_reason_subsys``: MAC80211_UNUSABLE, OPENVSWITCH) number
their codes in their own enum, which lives in the module's BTF (/sys/kernel/btf/<module>)
or in vmlinux when the subsystem is built in. A raw value renders as, in order:

1. its core name (``NO_SOCKET``), for subsystem 0;
2. the subsystem enum's own constant (``OVS_DROP_LAST_ACTION``) when that BTF is present;
3. ``<SUBSYSTEM>_<code>`` (``OPENVSWITCH_3``) when only the subsystem is known;
4. ``SUBSYS_<n>_<code>`` for a subsystem this kernel's BTF does not name;
5. ``UNKNOWN_<n>`` for a core value the enum does not have.

Retina naming maps kernel reasons onto Microsoft Retina's categories where one means the
same thing (``RETINA_CATEGORIES``); every other reason keeps the kernel's name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from retinad.kernel.btf import Btf, BtfError, drop_reason_subsystems, drop_reasons

SUBSYS_SHIFT = 16
SUBSYS_MASK = 0xFFFF0000

NOT_DROPPED_YET = "NOT_DROPPED_YET"
CONSUMED = "CONSUMED"
NOT_DROPS = (NOT_DROPPED_YET, CONSUMED)
"""Values of the enum that are not drops; the BPF program ignores them."""

SUBSYSTEM_ENUMS: Mapping[str, tuple[str, str]] = MappingProxyType(
    {
        "MAC80211_UNUSABLE": ("mac80211", "mac80211_drop_reason"),
        "OPENVSWITCH": ("openvswitch", "ovs_drop_reason"),
    }
)
"""Subsystem (as named in enum skb_drop_reason_subsys) -> (module, its reason enum)."""

RETINA_CATEGORIES: Mapping[str, str] = MappingProxyType(
    {
        # Retina's IPTABLE_RULE_DROP hooks nf_hook_slow returning an error, which is exactly
        # an NF_DROP verdict; nf_hook_slow frees that packet with NETFILTER_DROP. Retina's
        # IPTABLE_NAT_DROP (nf_nat_inet_fn -> NF_DROP) and CONNTRACK_ADD_DROP
        # (__nf_conntrack_confirm -> NF_DROP) drops also reach kfree_skb through
        # nf_hook_slow as NETFILTER_DROP: the kernel reason cannot tell them apart, so all
        # three render as IPTABLE_RULE_DROP.
        "NETFILTER_DROP": "IPTABLE_RULE_DROP",
        # Retina's UNKNOWN_DROP is a drop of unknown cause; the kernel says the same with
        # NOT_SPECIFIED (a plain kfree_skb() without a reason).
        "NOT_SPECIFIED": "UNKNOWN_DROP",
    }
)
"""Kernel reason -> Retina category, used in retina naming only. Retina's
TCP_CONNECT_BASIC and TCP_ACCEPT_BASIC count failed connect()/accept() calls, which free
no packet and have no kernel drop reason; TCP_CLOSE_BASIC has no hook even in Retina."""


def _empty() -> Mapping[int, str]:
    return MappingProxyType({})


@dataclass(frozen=True)
class DropReasonNames:
    """The name tables of one kernel, and the rendering rules over them."""

    core: Mapping[int, str]
    """enum skb_drop_reason, prefix stripped: {2: "NOT_SPECIFIED", ...}."""
    subsystems: Mapping[int, str] = field(default_factory=_empty)
    """enum skb_drop_reason_subsys without CORE's prefix: {2: "OPENVSWITCH", ...}."""
    subsystem_reasons: Mapping[int, str] = field(default_factory=_empty)
    """Full raw value (subsystem bits included) -> the subsystem enum's constant name."""

    def name(self, raw: int) -> str:
        """The label value for a raw reason (see the module docstring for the rules)."""
        subsys, code = (raw & SUBSYS_MASK) >> SUBSYS_SHIFT, raw & ~SUBSYS_MASK
        if subsys == 0:
            return self.core.get(raw, f"UNKNOWN_{raw}")
        own = self.subsystem_reasons.get(raw)
        if own is not None:
            return own
        sub = self.subsystems.get(subsys)
        return f"{sub}_{code}" if sub is not None else f"SUBSYS_{subsys}_{code}"

    def retina_name(self, raw: int) -> str:
        """The label value in retina naming: Retina's category where one exists."""
        name = self.name(raw)
        return RETINA_CATEGORIES.get(name, name)

    def value(self, name: str) -> int | None:
        """The raw value of a core reason name, or None if this kernel has no such reason."""
        for v, n in self.core.items():
            if n == name:
                return v
        return None

    @property
    def reason_count(self) -> int:
        """How many real drop reasons the core enum has (NOT_DROPPED_YET, CONSUMED excluded)."""
        return sum(1 for n in self.core.values() if n not in NOT_DROPS)


def subsystem_reason_names(btf: Btf, subsys: int, enum_name: str) -> dict[int, str]:
    """Constants of ``enum enum_name`` whose value carries ``subsys`` in its high bits;
    markers (``__OVS_DROP_REASON``, ``*_MAX``, ``*_MASK``) are left out."""
    out: dict[int, str] = {}
    for v, n in (btf.enum(enum_name) or {}).items():
        if (v & SUBSYS_MASK) >> SUBSYS_SHIFT != subsys or not v & ~SUBSYS_MASK:
            continue
        if n.startswith("_") or n.endswith(("_MAX", "_MASK")):
            continue
        out[v] = n
    return out


def load_names(vmlinux: Btf, module_btf_dir: Path | None = None) -> DropReasonNames:
    """Build the tables from vmlinux BTF, plus each named subsystem's enum from vmlinux or
    ``module_btf_dir/<module>`` (split BTF) when that module is loaded.

    Raises BtfError when vmlinux has no enum skb_drop_reason.
    """
    core = drop_reasons(vmlinux)
    subsystems = drop_reason_subsystems(vmlinux)
    subsystems.pop(0, None)  # CORE: its codes are the core enum
    own: dict[int, str] = {}
    for subsys, sub_name in subsystems.items():
        entry = SUBSYSTEM_ENUMS.get(sub_name)
        if entry is None:
            continue
        module, enum_name = entry
        btf: Btf | None = vmlinux if vmlinux.enum(enum_name) else None
        mod_path = module_btf_dir / module if module_btf_dir is not None else None
        if btf is None and mod_path is not None and mod_path.exists():
            try:
                btf = Btf.from_file(mod_path, base=vmlinux)
            except BtfError:
                btf = None  # a broken module blob only costs the subsystem's names
        if btf is not None:
            own.update(subsystem_reason_names(btf, subsys, enum_name))
    return DropReasonNames(
        core=MappingProxyType(core),
        subsystems=MappingProxyType(subsystems),
        subsystem_reasons=MappingProxyType(own),
    )
