"""packetparser.c on crafted frames, through BPF_PROG_TEST_RUN: exact counts per frame.

Each frame is built with scapy, run once through a program, and the maps are read before
and after: the difference must be exactly the expected packets, bytes, flags and key (or
nothing at all for frames the parser must not count). Every run must return
TC_ACT_UNSPEC (-1).
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_RR
from scapy.layers.inet6 import (
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether
from scapy.packet import Raw

from retinad.kernel import abi
from retinad.kernel.compile import compile_program
from retinad.kernel.maps import BatchReader
from tests.kernel.pp_helpers import bpf_dir, prog_test_run

TC_ACT_UNSPEC = -1
SRC4, DST4 = "10.1.2.3", "10.9.8.7"
SRC6, DST6 = "fd00::1", "fd00::2"
ETH = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")


@dataclass
class Loaded:
    bpf: Any
    fds: dict[str, int]
    readers: dict[str, BatchReader[Any, abi.TrafficValue]]

    def snapshot(self) -> dict[str, dict[bytes, tuple[int, ...]]]:
        out = {}
        for name, r in self.readers.items():
            out[name] = {bytes(k): (v.packets, v.bytes, *v.tcp_flags) for k, v in r.read()}
        return out


@pytest.fixture(scope="module")
def loaded() -> Iterator[Loaded]:
    from bcc import BPF

    b = compile_program(
        bpf_dir(),
        "packetparser.c",
        {"RETINAD_ADVANCED": 1, "RETINAD_REMOTE_CONTEXT": 1},
    )
    fds = {
        n: b.load_func(n.encode(), BPF.SCHED_CLS).fd
        for n in ("pp_host_ingress", "pp_host_egress", "pp_ep_ingress", "pp_ep_egress")
    }
    readers = {
        "pp_iface": BatchReader(b[b"pp_iface"], abi.IfaceKey, abi.TrafficValue, percpu=True),
        "pp_endpoint": BatchReader(
            b[b"pp_endpoint"], abi.EndpointKey, abi.TrafficValue, percpu=True
        ),
        "pp_remote": BatchReader(b[b"pp_remote"], abi.RemoteKey, abi.TrafficValue, percpu=True),
    }
    yield Loaded(b, fds, readers)
    b.cleanup()


def delta(before: dict[str, dict[bytes, tuple[int, ...]]], after: Any) -> dict[str, Any]:
    """Per map: key bytes -> (packets, bytes, flags...) added between the snapshots."""
    out: dict[str, Any] = {}
    for name, rows in after.items():
        for k, v in rows.items():
            old = before[name].get(k, (0,) * len(v))
            d = tuple(a - b for a, b in zip(v, old, strict=True))
            if any(d):
                out.setdefault(name, {})[k] = d
    return out


def run(loaded: Loaded, prog: str, frame: bytes, **kw: int) -> dict[str, Any]:
    before = loaded.snapshot()
    assert prog_test_run(loaded.fds[prog], frame, **kw) == TC_ACT_UNSPEC
    return delta(before, loaded.snapshot())


def mapped(ip: str) -> bytes:
    import ipaddress

    a = ipaddress.ip_address(ip)
    if a.version == 4:
        return b"\0" * 10 + b"\xff\xff" + a.packed
    return a.packed


def ekey(addr: str, direction: int, family: int, ifindex: int = 1) -> bytes:
    k = abi.EndpointKey(ifindex=ifindex, direction=direction, family=family)
    ctypes.memmove(k.addr, mapped(addr), 16)
    return bytes(k)


def ikey(direction: int, ifindex: int = 1) -> bytes:
    return bytes(abi.IfaceKey(ifindex=ifindex, direction=direction))


def flags_of(*names: str, n: int = 1) -> tuple[int, ...]:
    return tuple(n if f in names else 0 for f in abi.TCP_FLAG_NAMES)


def expect_counted(
    d: dict[str, Any], endpoint: bytes, size: int, flags: tuple[int, ...], *, host: bool
) -> None:
    row = (1, size, *flags)
    assert d["pp_endpoint"] == {endpoint: row}
    if host:
        assert list(d["pp_iface"].values()) == [row]
    else:
        assert "pp_iface" not in d
    assert len(d["pp_remote"]) == 1 and list(d["pp_remote"].values()) == [row]


# --- frames that must be counted -----------------------------------------------------------

UDP100 = bytes(ETH / IP(src=SRC4, dst=DST4) / UDP(sport=1000, dport=2000) / Raw(b"x" * 100))


def test_ipv4_udp_100_bytes_is_142_on_every_program(loaded: Loaded) -> None:
    assert len(UDP100) == 142
    v4 = abi.FAMILY_IPV4
    d = run(loaded, "pp_host_ingress", UDP100)
    expect_counted(d, ekey(DST4, abi.DIR_INGRESS, v4), 142, flags_of(), host=True)
    assert d["pp_iface"] == {ikey(abi.DIR_INGRESS): (1, 142, *flags_of())}
    d = run(loaded, "pp_host_egress", UDP100)
    expect_counted(d, ekey(SRC4, abi.DIR_EGRESS, v4), 142, flags_of(), host=True)
    # Container veth, host side: tc ingress is the container's egress (endpoint = source).
    d = run(loaded, "pp_ep_ingress", UDP100)
    expect_counted(d, ekey(SRC4, abi.DIR_EGRESS, v4), 142, flags_of(), host=False)
    d = run(loaded, "pp_ep_egress", UDP100)
    expect_counted(d, ekey(DST4, abi.DIR_INGRESS, v4), 142, flags_of(), host=False)


def test_remote_key_pairs_local_and_remote(loaded: Loaded) -> None:
    d = run(loaded, "pp_ep_ingress", UDP100)
    k = abi.RemoteKey(ifindex=1, direction=abi.DIR_EGRESS, family=abi.FAMILY_IPV4)
    ctypes.memmove(k.local, mapped(SRC4), 16)
    ctypes.memmove(k.remote, mapped(DST4), 16)
    assert d["pp_remote"] == {bytes(k): (1, 142, *flags_of())}


CASES = {
    "ipv4 options (IHL 8) + TCP SYN": (
        ETH
        / IP(src=SRC4, dst=DST4, options=[IPOption_RR(routers=["1.1.1.1"] * 2)])
        / TCP(flags="S"),
        abi.FAMILY_IPV4,
        flags_of("SYN"),
    ),
    "802.1Q + IPv4 UDP": (
        ETH / Dot1Q(vlan=10) / IP(src=SRC4, dst=DST4) / UDP() / Raw(b"y" * 20),
        abi.FAMILY_IPV4,
        flags_of(),
    ),
    "QinQ 802.1ad + 802.1Q + IPv4 TCP": (
        ETH
        / Dot1AD(vlan=100)
        / Dot1Q(vlan=10)
        / IP(src=SRC4, dst=DST4)
        / TCP(flags="PA")
        / Raw(b"z" * 7),
        abi.FAMILY_IPV4,
        flags_of("PSH", "ACK"),
    ),
    "IPv6 UDP": (
        ETH / IPv6(src=SRC6, dst=DST6) / UDP() / Raw(b"x" * 100),
        abi.FAMILY_IPV6,
        flags_of(),
    ),
    "IPv6 hop-by-hop, routing, dest-opts, fragment(0) + TCP FIN|ACK": (
        ETH
        / IPv6(src=SRC6, dst=DST6)
        / IPv6ExtHdrHopByHop()
        / IPv6ExtHdrRouting(addresses=[])
        / IPv6ExtHdrDestOpt()
        / IPv6ExtHdrFragment(offset=0, m=1)
        / TCP(flags="FA"),
        abi.FAMILY_IPV6,
        flags_of("FIN", "ACK"),
    ),
    "802.1Q + IPv6 + 6 extension headers + UDP": (
        ETH
        / Dot1Q(vlan=7)
        / IPv6(src=SRC6, dst=DST6)
        / IPv6ExtHdrHopByHop()
        / IPv6ExtHdrDestOpt()
        / IPv6ExtHdrDestOpt()
        / IPv6ExtHdrDestOpt()
        / IPv6ExtHdrDestOpt()
        / IPv6ExtHdrDestOpt()
        / UDP(),
        abi.FAMILY_IPV6,
        flags_of(),
    ),
    "every TCP flag": (
        ETH / IP(src=SRC4, dst=DST4) / TCP(flags="FSRPAUEC"),
        abi.FAMILY_IPV4,
        flags_of(*abi.TCP_FLAG_NAMES),
    ),
    "TCP with options (data offset 8)": (
        ETH
        / IP(src=SRC4, dst=DST4)
        / TCP(flags="S", options=[("MSS", 1460), ("SAckOK", b""), ("Timestamp", (1, 0))]),
        abi.FAMILY_IPV4,
        flags_of("SYN"),
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_parsed_frames_are_counted_exactly(loaded: Loaded, name: str) -> None:
    pkt, family, flags = CASES[name]
    frame = bytes(pkt)
    dst = DST4 if family == abi.FAMILY_IPV4 else DST6
    d = run(loaded, "pp_host_ingress", frame)
    expect_counted(d, ekey(dst, abi.DIR_INGRESS, family), len(frame), flags, host=True)


def test_non_first_fragments_count_packets_and_bytes_without_flags(loaded: Loaded) -> None:
    v4 = bytes(ETH / IP(src=SRC4, dst=DST4, proto=6, frag=185) / Raw(b"q" * 64))
    d = run(loaded, "pp_host_ingress", v4)
    expect_counted(d, ekey(DST4, abi.DIR_INGRESS, abi.FAMILY_IPV4), len(v4), flags_of(), host=True)
    v6 = bytes(
        ETH / IPv6(src=SRC6, dst=DST6) / IPv6ExtHdrFragment(offset=100, nh=6) / Raw(b"\xff" * 30)
    )
    d = run(loaded, "pp_host_ingress", v6)
    expect_counted(d, ekey(DST6, abi.DIR_INGRESS, abi.FAMILY_IPV6), len(v6), flags_of(), host=True)


def test_gso_packet_counts_every_segment(loaded: Loaded) -> None:
    """A TSO/GRO skb of 4 segments: 4 packets, headers repeated, ACK on all, PSH once."""
    pkt = (
        ETH / IP(src=SRC4, dst=DST4) / TCP(flags="PA") / Raw(b"d" * 3000)
    )  # test_run takes at most ~3.7 KiB
    frame = bytes(pkt)
    d = run(loaded, "pp_host_egress", frame, gso_segs=4, gso_size=750)
    hdr = 14 + 20 + 20
    row = (
        4,
        len(frame) + 3 * hdr,
        *tuple(4 if f == "ACK" else int(f == "PSH") for f in abi.TCP_FLAG_NAMES),
    )
    assert d["pp_endpoint"] == {ekey(SRC4, abi.DIR_EGRESS, abi.FAMILY_IPV4): row}


# --- frames that must not be counted -------------------------------------------------------

TCP_FULL = bytes(ETH / IP(src=SRC4, dst=DST4) / TCP(flags="S"))
IHL15 = bytearray(bytes(ETH / IP(src=SRC4, dst=DST4) / UDP()))
IHL15[14] = 0x4F  # claims 60 bytes of IPv4 header; the frame has 28 after Ethernet

# BPF_PROG_TEST_RUN refuses to build an skb from a bare Ethernet header or an IPv4 frame
# shorter than its fixed header (EINVAL), so those two go through a real veth in
# test_packetparser_veth.py::test_truncated_and_garbage_frames_through_a_veth.
IGNORED = {
    "ICMP": bytes(ETH / IP(src=SRC4, dst=DST4) / ICMP()),
    "ARP": bytes(ETH / ARP()),
    "TCP truncated at 12 of 20 header bytes": TCP_FULL[: 14 + 20 + 12],
    "UDP truncated at 6 of 8 header bytes": bytes(ETH / IP(src=SRC4, dst=DST4) / UDP())[:40],
    "IPv4 IHL 3": bytes(ETH)[:12] + b"\x08\x00" + b"\x43" + bytes(40),
    "IPv4 options claimed, frame too short": bytes(IHL15),
    "version 6 in an IPv4 ethertype": bytes(ETH)[:12] + b"\x08\x00" + b"\x65" + bytes(40),
    "TCP data offset 2": bytes(ETH / IP(src=SRC4, dst=DST4) / TCP(dataofs=2)),
    "IPv6 with 7 extension headers": bytes(
        ETH
        / IPv6(src=SRC6, dst=DST6)
        / IPv6ExtHdrHopByHop()
        / IPv6ExtHdrDestOpt()
        / IPv6ExtHdrDestOpt()
        / IPv6ExtHdrDestOpt()
        / IPv6ExtHdrDestOpt()
        / IPv6ExtHdrDestOpt()
        / IPv6ExtHdrDestOpt()
        / UDP()
    ),
    "three VLAN tags": bytes(
        ETH / Dot1AD(vlan=1) / Dot1Q(vlan=2) / Dot1Q(vlan=3) / IP(src=SRC4, dst=DST4) / UDP()
    ),
    "all 0xff": b"\xff" * 64,
    "all zero": bytes(64),
    "IPv6 truncated extension header": bytes(
        ETH / IPv6(src=SRC6, dst=DST6) / IPv6ExtHdrDestOpt(len=20) / UDP()
    ),
}


WHY = {
    "ICMP": "not_tcp_udp",
    "ARP": "not_ip",
    "TCP truncated at 12 of 20 header bytes": "truncated",
    "UDP truncated at 6 of 8 header bytes": "truncated",
    "IPv4 IHL 3": "bad_header",
    "IPv4 options claimed, frame too short": "truncated",
    "version 6 in an IPv4 ethertype": "bad_header",
    "TCP data offset 2": "bad_header",
    "IPv6 with 7 extension headers": "ipv6_ext_chain",
    "three VLAN tags": "not_ip",
    "all 0xff": "not_ip",
    "all zero": "not_ip",
    "IPv6 truncated extension header": "truncated",
}
"""The retinad_packets_unparsed_total reason each ignored frame is counted under."""
SLOT_OF = {  # program -> (host role, direction counted)
    "pp_host_ingress": (True, abi.DIR_INGRESS),
    "pp_host_egress": (True, abi.DIR_EGRESS),
    "pp_ep_ingress": (False, abi.DIR_EGRESS),
    "pp_ep_egress": (False, abi.DIR_INGRESS),
}


def unparsed(loaded: Loaded) -> list[int]:
    table = loaded.bpf[b"pp_unparsed"]
    return [int(table.sum(table.Key(i)).value) for i in range(abi.UNPARSED_SLOTS)]


@pytest.mark.parametrize("name", list(IGNORED))
def test_unparseable_frames_are_not_counted(loaded: Loaded, name: str) -> None:
    reason = abi.UNPARSED_REASONS.index(WHY[name])
    for prog in loaded.fds:
        before = unparsed(loaded)
        assert run(loaded, prog, IGNORED[name]) == {}, prog
        after = unparsed(loaded)
        slot = abi.unparsed_slot(reason, *SLOT_OF[prog])
        want = [b + (i == slot) for i, b in enumerate(before)]
        assert after == want, f"{prog}: counted once under {WHY[name]}"
