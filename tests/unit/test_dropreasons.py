"""Naming raw drop reasons (retinad.kernel.dropreasons) and the defines the BPF program
gets from BTF (retinad.plugins.dropreason.kernel_defines), on literal tables and blobs."""

from __future__ import annotations

from pathlib import Path

import pytest

from retinad.errors import KernelError
from retinad.kernel.btf import VMLINUX_BTF, Btf
from retinad.kernel.dropreasons import RETINA_CATEGORIES, DropReasonNames, load_names
from retinad.plugins.dropreason import kernel_defines
from tests.fixtures.btf_writer import BtfWriter

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"

NAMES = DropReasonNames(
    core={0: "NOT_DROPPED_YET", 1: "CONSUMED", 2: "NOT_SPECIFIED", 12: "NETFILTER_DROP"},
    subsystems={1: "MAC80211_UNUSABLE", 2: "OPENVSWITCH"},
    subsystem_reasons={(2 << 16) | 1: "OVS_DROP_LAST_ACTION"},
)


@pytest.mark.parametrize(
    ("raw", "name"),
    [
        (12, "NETFILTER_DROP"),
        (2, "NOT_SPECIFIED"),
        (500, "UNKNOWN_500"),
        ((2 << 16) | 1, "OVS_DROP_LAST_ACTION"),
        ((2 << 16) | 7, "OPENVSWITCH_7"),
        ((1 << 16) | 3, "MAC80211_UNUSABLE_3"),
        ((9 << 16) | 4, "SUBSYS_9_4"),
        (0xFFFF0000 | 0xFFFF, "SUBSYS_65535_65535"),
    ],
)
def test_name(raw: int, name: str) -> None:
    assert NAMES.name(raw) == name


def test_retina_categories() -> None:
    assert NAMES.retina_name(12) == "IPTABLE_RULE_DROP"
    assert NAMES.retina_name(2) == "UNKNOWN_DROP"
    assert NAMES.retina_name(500) == "UNKNOWN_500"
    assert NAMES.retina_name((2 << 16) | 1) == "OVS_DROP_LAST_ACTION"
    assert set(RETINA_CATEGORIES) == {"NETFILTER_DROP", "NOT_SPECIFIED"}


def test_value_and_count() -> None:
    assert NAMES.value("CONSUMED") == 1
    assert NAMES.value("NOPE") is None
    assert NAMES.reason_count == 2


def test_running_kernel_names() -> None:
    names = load_names(Btf.from_file(VMLINUX_BTF))
    assert names.value("NETFILTER_DROP") is not None
    assert names.name(names.value("NO_SOCKET") or -1) == "NO_SOCKET"
    # this kernel's BTF names the subsystems but has no mac80211/openvswitch enums
    assert names.name((2 << 16) | 5) == "OPENVSWITCH_5"


def _subsys_vmlinux() -> BtfWriter:
    w = BtfWriter()
    w.enum(
        "skb_drop_reason",
        {"SKB_NOT_DROPPED_YET": 0, "SKB_CONSUMED": 1, "SKB_DROP_REASON_NOT_SPECIFIED": 2},
    )
    w.enum(
        "skb_drop_reason_subsys",
        {
            "SKB_DROP_REASON_SUBSYS_CORE": 0,
            "SKB_DROP_REASON_SUBSYS_MAC80211_UNUSABLE": 1,
            "SKB_DROP_REASON_SUBSYS_OPENVSWITCH": 2,
            "SKB_DROP_REASON_SUBSYS_NUM": 3,
        },
    )
    return w


def test_subsystem_enum_from_module_btf(tmp_path: Path) -> None:
    base = _subsys_vmlinux()
    vmlinux = Btf(base.blob(), source="vmlinux")
    mod = BtfWriter(base_types=base.type_count, base_str_len=base.str_len)
    ovs = 2 << 16
    mod.enum(
        "ovs_drop_reason",
        {
            "__OVS_DROP_REASON": ovs,
            "OVS_DROP_LAST_ACTION": ovs | 1,
            "OVS_DROP_ACTION_ERROR": ovs | 2,
            "OVS_DROP_MAX": ovs | 3,
        },
    )
    (tmp_path / "openvswitch").write_bytes(mod.blob())
    names = load_names(vmlinux, tmp_path)
    assert names.name(ovs | 1) == "OVS_DROP_LAST_ACTION"
    assert names.name(ovs | 2) == "OVS_DROP_ACTION_ERROR"
    assert names.name(ovs | 3) == "OPENVSWITCH_3"  # the MAX marker is not a reason
    assert names.name(ovs) == "OPENVSWITCH_0"
    assert names.name((1 << 16) | 4) == "MAC80211_UNUSABLE_4"  # module not loaded
    assert names.name(3 << 16) == "SUBSYS_3_0"  # NUM is a bound, not a subsystem
    assert names.reason_count == 1


def test_broken_module_btf_only_costs_its_names(tmp_path: Path) -> None:
    vmlinux = Btf(_subsys_vmlinux().blob(), source="vmlinux")
    (tmp_path / "openvswitch").write_bytes(b"garbage")
    assert load_names(vmlinux, tmp_path).name((2 << 16) | 1) == "OPENVSWITCH_1"


# --- defines for bpf/dropreason.c --------------------------------------------------------------


def test_defines_for_this_kernel() -> None:
    btf = Btf.from_file(VMLINUX_BTF)
    d = kernel_defines(btf, load_names(btf))
    assert d["RETINAD_HAS_RX_SK"] == 1
    assert d["RETINAD_REASON_NOT_DROPPED_YET"] == 0
    assert d["RETINAD_REASON_CONSUMED"] == 1
    assert d["RETINAD_SKB_OFF_HEAD"] == btf.member("sk_buff", "head").offset  # type: ignore[union-attr]


def test_defines_for_debian_61() -> None:
    btf = Btf.from_file(FIXTURES / "btf-6.1-drop-reasons.btf")
    d = kernel_defines(btf, load_names(btf))
    assert d["RETINAD_HAS_RX_SK"] == 0
    assert d["RETINAD_REASON_CONSUMED"] == -1  # 6.1 has no SKB_CONSUMED
    assert d["RETINAD_SKB_OFF_HEAD"] == 200
    assert d["RETINAD_SKB_OFF_NETWORK_HEADER"] == 184


def test_defines_refuse_a_kernel_without_reason_field() -> None:
    w = _subsys_vmlinux()
    ptr = w.int_type("u64", 8)
    w.struct("trace_event_raw_kfree_skb", 24, [("skbaddr", ptr, 8), ("location", ptr, 16)])
    btf = Btf(w.blob(), source="old-vmlinux")
    with pytest.raises(KernelError, match=r"old-vmlinux: .* has no 'reason' field.*5\.17"):
        kernel_defines(btf, load_names(btf))


def test_defines_refuse_a_resized_sk_buff_member() -> None:
    w = _subsys_vmlinux()
    u32 = w.int_type("u32", 4)
    w.struct("trace_event_raw_kfree_skb", 40, [("reason", u32, 36)])
    w.struct("sk_buff", 64, [("head", u32, 0)])
    btf = Btf(w.blob(), source="odd")
    with pytest.raises(KernelError, match=r"odd: struct sk_buff.head: expected 8 bytes, 4 bytes"):
        kernel_defines(btf, load_names(btf))
