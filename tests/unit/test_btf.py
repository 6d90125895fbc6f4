"""retinad.kernel.btf on this kernel's BTF, on Debian 6.1's, and on hand-made blobs.

The running kernel is checked against its own tracefs: the skb:kfree_skb format file
prints the reason table (``__print_symbolic``) and the record's field offsets, an oracle
independent of the BTF reader.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest

from retinad.kernel.btf import (
    VMLINUX_BTF,
    Btf,
    BtfError,
    drop_reason_subsystems,
    drop_reasons,
    enum_has_member,
    read_drop_reasons,
    struct_has_member,
)
from tests.fixtures.btf_writer import BtfWriter

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
BTF_61 = FIXTURES / "btf-6.1-drop-reasons.btf"
KFREE_SKB_FORMAT = [
    Path("/sys/kernel/tracing/events/skb/kfree_skb/format"),
    Path("/sys/kernel/debug/tracing/events/skb/kfree_skb/format"),
]


def _format_file() -> str:
    for p in KFREE_SKB_FORMAT:
        if p.exists():
            return p.read_text()
    raise AssertionError("tracefs is not mounted: scripts/setup.sh mounts it")


@pytest.fixture(scope="module")
def vmlinux() -> Btf:
    return Btf.from_file(VMLINUX_BTF)


# --- this kernel ----------------------------------------------------------------------------


def test_reasons_match_the_tracepoints_own_table(vmlinux: Btf) -> None:
    printed = {int(v): n for v, n in re.findall(r'\{ (\d+), "([A-Z0-9_]+)" \}', _format_file())}
    assert printed, "no __print_symbolic table in the kfree_skb format file"
    printed.pop(max(printed))  # the table ends with MAX, a bound, not a reason
    reasons = drop_reasons(vmlinux)
    assert reasons[0] == "NOT_DROPPED_YET" and reasons[1] == "CONSUMED"
    assert {v: n for v, n in reasons.items() if v > 1} == printed
    assert read_drop_reasons() == reasons


def test_named_reasons_on_this_kernel(vmlinux: Btf) -> None:
    names = set(drop_reasons(vmlinux).values())
    for n in ("NO_SOCKET", "NETFILTER_DROP", "SOCKET_RCVBUFF", "IP_INADDRERRORS"):
        assert n in names
    assert "MAX" not in names and "SUBSYS_MASK" not in names and "MASK" not in names


def test_subsystems_on_this_kernel(vmlinux: Btf) -> None:
    subsys = drop_reason_subsystems(vmlinux)
    assert subsys[0] == "CORE"
    assert "OPENVSWITCH" in subsys.values() and "MAC80211_UNUSABLE" in subsys.values()
    assert "NUM" not in subsys.values()


def test_tracepoint_record_offsets_match_tracefs(vmlinux: Btf) -> None:
    fields = {
        name: (int(off), int(size))
        for name, off, size in re.findall(
            r"field:[^;]*?(\w+);\s*offset:(\d+);\s*size:(\d+);", _format_file()
        )
    }
    assert {"skbaddr", "location", "protocol", "reason", "rx_sk"} <= fields.keys()
    for name in ("skbaddr", "location", "protocol", "reason", "rx_sk"):
        m = vmlinux.member("trace_event_raw_kfree_skb", name)
        assert m is not None, name
        assert (m.offset, m.size) == fields[name], name


def test_sk_buff_members_found_inside_anonymous_unions(vmlinux: Btf) -> None:
    # network_header sits in struct_group(headers) (an anonymous union of anonymous structs)
    nh = vmlinux.member("sk_buff", "network_header")
    assert nh is not None and nh.size == 2
    head = vmlinux.member("sk_buff", "head")
    assert head is not None and head.size == 8
    assert vmlinux.member("sk_buff", "no_such_member") is None
    assert vmlinux.member("no_such_struct", "head") is None


def test_feature_helpers(vmlinux: Btf) -> None:
    assert enum_has_member(VMLINUX_BTF, "skb_drop_reason", "SKB_DROP_REASON_NO_SOCKET")
    assert not enum_has_member(VMLINUX_BTF, "skb_drop_reason", "SKB_DROP_REASON_NOPE")
    assert struct_has_member(VMLINUX_BTF, "trace_event_raw_kfree_skb", "reason")
    assert not struct_has_member(VMLINUX_BTF, "trace_event_raw_kfree_skb", "nope")


# --- another kernel: Debian 6.1 --------------------------------------------------------------


def test_debian_61_enum_is_numbered_differently() -> None:
    old = drop_reasons(Btf.from_file(BTF_61))
    new = drop_reasons(Btf.from_file(VMLINUX_BTF))
    # value -> name pairs of 6.1.192 (Debian 6.1.0-56) that 6.18 renumbered
    assert old[1] == "NOT_SPECIFIED" and new[2] == "NOT_SPECIFIED"
    assert old[2] == "NO_SOCKET" and new[3] == "NO_SOCKET"
    assert old[7] == "NETFILTER_DROP" and new[12] == "NETFILTER_DROP"
    assert old[3] == "PKT_TOO_SMALL"
    assert old[0] == "NOT_DROPPED_YET"
    assert "CONSUMED" not in old.values()  # SKB_CONSUMED came in 6.2
    assert len(old) == 66  # 0..65; SKB_DROP_REASON_MAX (66) left out


def test_debian_61_has_no_subsystems_and_no_rx_sk() -> None:
    btf = Btf.from_file(BTF_61)
    assert drop_reason_subsystems(btf) == {}
    assert btf.member("trace_event_raw_kfree_skb", "rx_sk") is None
    reason = btf.member("trace_event_raw_kfree_skb", "reason")
    assert reason is not None and reason.offset == 28
    head = btf.member("sk_buff", "head")
    assert head is not None and head.offset == 200  # 192 on 6.18


# --- hand-made blobs ------------------------------------------------------------------------


def test_enum64_and_signed_values() -> None:
    w = BtfWriter()
    w.enum("wide", {"A": 1, "B": 1 << 40})
    w.enum("neg", {"M": -5, "P": 7})
    btf = Btf(w.blob(), source="test")
    assert btf.enum("wide") == {1: "A", 1 << 40: "B"}
    assert btf.enum("neg") == {-5: "M", 7: "P"}
    assert btf.enum("absent") is None


def test_big_endian_blob() -> None:
    w = BtfWriter()
    w.endian = ">"
    w.enum("skb_drop_reason", {"SKB_NOT_DROPPED_YET": 0, "SKB_DROP_REASON_NO_SOCKET": 3})
    assert drop_reasons(Btf(w.blob(), source="be")) == {0: "NOT_DROPPED_YET", 3: "NO_SOCKET"}


def test_forward_declared_enum_is_skipped() -> None:
    w = BtfWriter()
    w.enum("e", {})
    w.enum("e", {"X": 9})
    assert Btf(w.blob(), source="t").enum("e") == {9: "X"}


def test_nested_anonymous_members_and_typedefs() -> None:
    w = BtfWriter()
    u16 = w.int_type("u16", 2)
    u32 = w.typedef("u32", w.int_type("unsigned int", 4))
    inner = w.struct("", 4, [("b", u16, 0), ("c", u16, 2)])
    union = w.struct("", 4, [("", inner, 0), ("d", u32, 0)], union=True)
    w.struct("outer", 12, [("a", u32, 0), ("", union, 8)])
    btf = Btf(w.blob(), source="t")
    c = btf.member("outer", "c")
    d = btf.member("outer", "d")
    assert c is not None and (c.offset, c.size) == (10, 2)
    assert d is not None and (d.offset, d.size) == (8, 4)


def test_split_btf_continues_ids_and_strings() -> None:
    base = BtfWriter()
    u32 = base.int_type("u32", 4)
    base_btf = Btf(base.blob(), source="base")
    mod = BtfWriter(base_types=base.type_count, base_str_len=base.str_len)
    mod.struct("in_module", 4, [("x", u32, 0)])  # member type from the base
    mod.enum("mod_enum", {"Y": 2})
    btf = Btf(mod.blob(), source="mod", base=base_btf)
    x = btf.member("in_module", "x")
    assert x is not None and (x.offset, x.size) == (0, 4)
    assert btf.enum("mod_enum") == {2: "Y"}


# --- errors name the file and the fault -----------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(BtfError, match=rf"{tmp_path}/vmlinux: no such file.*CONFIG_DEBUG_INFO_BTF"):
        Btf.from_file(tmp_path / "vmlinux")


def test_not_btf(tmp_path: Path) -> None:
    p = tmp_path / "junk"
    p.write_bytes(b"\x7fELF" + bytes(40))
    with pytest.raises(BtfError, match=rf"{p}: not BTF: bad magic 7f45"):
        Btf.from_file(p)
    p.write_bytes(b"\x9f\xeb")
    with pytest.raises(BtfError, match=r"shorter than a BTF header"):
        Btf.from_file(p)


def test_truncated_sections() -> None:
    w = BtfWriter()
    w.enum("e", {"X": 1})
    blob = w.blob()
    with pytest.raises(BtfError, match=r"t: truncated BTF"):
        Btf(blob[:-3], source="t")
    bad_kind = bytearray(blob)
    struct.pack_into("<I", bad_kind, 24 + 4, 30 << 24)  # kind 30 does not exist
    with pytest.raises(BtfError, match=r"unknown BTF kind 30 at type id 1"):
        Btf(bytes(bad_kind), source="t")


def test_blob_without_the_enum(tmp_path: Path) -> None:
    w = BtfWriter()
    w.int_type("int", 4)
    p = tmp_path / "old.btf"
    p.write_bytes(w.blob())
    with pytest.raises(BtfError, match=rf"{p}: has no enum skb_drop_reason .*5\.17"):
        read_drop_reasons(p)


def test_xz_compressed_blob(tmp_path: Path) -> None:
    import lzma

    p = tmp_path / "b.btf.xz"
    p.write_bytes(lzma.compress(BTF_61.read_bytes()))
    assert drop_reasons(Btf.from_file(p))[7] == "NETFILTER_DROP"
