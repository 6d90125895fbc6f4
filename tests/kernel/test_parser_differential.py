"""Differential test of packetparser.c: 20,000+ seeded frames, the program's reading of each
(through BPF_PROG_TEST_RUN) against scapy's reading of the same bytes.

The generator (seeded, so a failure replays) builds a pool of 800 valid frames with scapy
- up to 3 VLAN tags, IPv4 with options and fragments, IPv6 with extension-header chains
(hop-by-hop, routing, fragment, destination options, AH), TCP/UDP/ICMP/other, garbage
ethertypes - then draws 21,000 frames from it and mutates a quarter: truncations, the IP
version/IHL byte replaced, random bytes replaced. The oracle dissects each header with
scapy at the offset the previous header's length gives, and applies the rules
packetparser documents (2 VLAN tags, 6 IPv6 extension headers, a header is usable only
when the frame holds its fixed part and what its length fields claim). For every frame
the program's reading must be the oracle's: counted or not (and then under which
unparsed reason), the endpoint key (family, address, direction), bytes and TCP flags.
Ports and the L4 protocol are not in retinad's maps: only their consequences (counted,
flags) are compared.
"""

from __future__ import annotations

import errno
import ipaddress
import random
import struct
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import (
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.layers.ipsec import AH
from scapy.layers.l2 import Dot1AD, Dot1Q, Ether
from scapy.packet import Raw

from retinad.kernel import abi
from retinad.kernel.compile import compile_program
from tests.kernel.pp_helpers import bpf_dir, prog_test_run

SEED = 20261201
FRAMES = 21000
POOL = 800
VLAN_MAX, EXT_MAX = 2, 6
EXT_PROTOS = (0, 43, 44, 51, 60)


@dataclass(frozen=True)
class Reading:
    """What counting one frame amounts to: a reason it was not, or its key and values."""

    reason: str | None
    family: int = 0
    addr: bytes = b""
    nbytes: int = 0
    flags: tuple[int, ...] = ()


def _flags(b: int) -> tuple[int, ...]:
    return tuple((b >> i) & 1 for i in range(abi.TCP_NFLAGS))


def _mapped(ip: str) -> bytes:
    a = ipaddress.ip_address(ip)
    return b"\0" * 10 + b"\xff\xff" + a.packed if a.version == 4 else a.packed


def oracle(frame: bytes) -> Reading:
    """scapy's reading, header by header (see the module docstring)."""
    n = len(frame)
    if n < 14:
        return Reading("truncated")
    # The type fields are read with struct: scapy reads a type <= 1500 as an 802.3 length.
    etype, off = struct.unpack_from("!H", frame, 12)[0], 14
    for _ in range(VLAN_MAX):
        if etype not in (0x8100, 0x88A8):
            break
        if n < off + 4:
            return Reading("truncated")
        etype, off = struct.unpack_from("!H", frame, off + 2)[0], off + 4
    if etype == 0x0800:
        if n < off + 20:
            return Reading("truncated")
        ip = IP(frame[off : off + 20])
        if ip.version != 4 or ip.ihl < 5:
            return Reading("bad_header")
        if n < off + ip.ihl * 4:
            return Reading("truncated")
        family, local, proto = abi.FAMILY_IPV4, _mapped(ip.dst), ip.proto
        has_l4 = ip.frag == 0
        off += ip.ihl * 4
    elif etype == 0x86DD:
        if n < off + 40:
            return Reading("truncated")
        ip6 = IPv6(frame[off : off + 40])
        if ip6.version != 6:
            return Reading("bad_header")
        family, local, proto, has_l4 = abi.FAMILY_IPV6, _mapped(ip6.dst), ip6.nh, True
        off += 40
        for _ in range(EXT_MAX):
            if proto not in EXT_PROTOS:
                break
            if n < off + 4:
                return Reading("truncated")
            if proto == 44:
                frag = IPv6ExtHdrFragment(frame[off : off + 8].ljust(8, b"\0"))
                has_l4 = has_l4 and frag.offset == 0
                size, proto = 8, frag.nh
            elif proto == 51:
                ah = AH(frame[off : off + 12].ljust(12, b"\0"))
                size, proto = (ah.payloadlen + 2) * 4, ah.nh
            else:
                hdr = IPv6ExtHdrHopByHop(frame[off : off + 2])
                size, proto = (hdr.len + 1) * 8, hdr.nh
            off += size
        if n < off:
            return Reading("truncated")
        if proto in EXT_PROTOS:
            return Reading("ipv6_ext_chain")
    else:
        return Reading("not_ip")
    if proto not in (6, 17):
        return Reading("not_tcp_udp")
    if not has_l4:
        return Reading(None, family, local, n, _flags(0))
    if proto == 6:
        if n < off + 20:
            return Reading("truncated")
        tcp = TCP(frame[off : off + 20])
        if tcp.dataofs < 5:
            return Reading("bad_header")
        if n < off + tcp.dataofs * 4:
            return Reading("truncated")
        return Reading(None, family, local, n, _flags(int(tcp.flags)))
    if n < off + 8:
        return Reading("truncated")
    UDP(frame[off : off + 8])  # scapy must read it as UDP
    return Reading(None, family, local, n, _flags(0))


# --- the generator ----------------------------------------------------------------------


def _l4(rng: random.Random) -> Any:
    kind = rng.random()
    payload = Raw(bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 64))))
    if kind < 0.45:
        opts = [("NOP", None)] * rng.randrange(0, 12)
        return TCP(sport=rng.randrange(65536), dport=rng.randrange(65536),
                   flags=rng.getrandbits(8), options=opts) / payload  # fmt: skip
    if kind < 0.85:
        return UDP(sport=rng.randrange(65536), dport=rng.randrange(65536)) / payload
    if kind < 0.93:
        return ICMP() / payload
    return Raw(bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 40))))


def _ipv4(rng: random.Random) -> Any:
    l4 = _l4(rng)
    proto = {TCP: 6, UDP: 17, ICMP: 1}.get(type(l4), rng.choice([47, 50, 132, 255]))
    opts = b"\x01" * (4 * rng.randrange(0, 11)) if rng.random() < 0.3 else b""
    frag = rng.randrange(1, 8192) if rng.random() < 0.1 else 0
    return IP(src=f"10.{rng.randrange(256)}.0.1", dst=f"10.{rng.randrange(256)}.0.2",
              proto=proto, options=opts, frag=frag, flags=rng.choice([0, 1, 2])) / l4  # fmt: skip


def _ipv6(rng: random.Random) -> Any:
    pkt: Any = IPv6(
        src=f"fd00:{rng.randrange(65536):x}::1", dst=f"fd00:{rng.randrange(65536):x}::2"
    )
    for _ in range(rng.choice([0, 0, 1, 2, 3, 5, 6, 7, 8])):
        ext = rng.choice(["hbh", "dst", "rt", "frag", "ah"])
        if ext == "hbh":
            pkt = pkt / IPv6ExtHdrHopByHop()
        elif ext == "dst":
            pkt = pkt / IPv6ExtHdrDestOpt()
        elif ext == "rt":
            pkt = pkt / IPv6ExtHdrRouting(addresses=["fd00::9"] * rng.randrange(0, 3))
        elif ext == "frag":
            pkt = pkt / IPv6ExtHdrFragment(offset=rng.choice([0, 0, 1, 100]), m=rng.randrange(2))
        else:
            pkt = pkt / AH(spi=1, icv=b"\0" * 12)
    return pkt / _l4(rng)


def valid(rng: random.Random) -> bytes:
    """One frame built by scapy (about 10 ms each here: the pool is built once)."""
    pkt: Any = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    for _ in range(rng.choice([0, 0, 0, 1, 1, 2, 3])):
        pkt = pkt / (Dot1AD(vlan=rng.randrange(4096)) if rng.random() < 0.3 else
                     Dot1Q(vlan=rng.randrange(4096)))  # fmt: skip
    r = rng.random()
    if r < 0.5:
        pkt = pkt / _ipv4(rng)
    elif r < 0.9:
        pkt = pkt / _ipv6(rng)
    else:
        pkt = pkt / Raw(bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 80))))
    frame = bytearray(bytes(pkt))
    if r >= 0.9:  # a garbage ethertype at the innermost type field
        struct.pack_into("!H", frame, 12 + 4 * _tags(frame), rng.randrange(65536))
    return bytes(frame)


def mutate(rng: random.Random, base: bytes) -> bytes:
    """A pool frame as it is (75%) or mutated: truncated, its IP version/IHL byte or a few
    random bytes replaced."""
    frame = bytearray(base)
    m = rng.random()
    if m < 0.15:
        frame = frame[: rng.randrange(14, len(frame) + 1)]
    elif m < 0.2:
        i = 14 + 4 * _tags(frame)
        if i < len(frame):
            frame[i] = rng.getrandbits(8)  # version/IHL byte of IPv4, version of IPv6
    elif m < 0.25:
        for _ in range(rng.randrange(1, 4)):
            frame[rng.randrange(len(frame))] = rng.getrandbits(8)
    return bytes(frame)


def _tags(frame: bytes | bytearray) -> int:
    n, off = 0, 12
    while n < 3 and off + 2 <= len(frame) and frame[off : off + 2] in (b"\x81\x00", b"\x88\xa8"):
        n, off = n + 1, off + 4
    return n


# --- the program's reading ----------------------------------------------------------------


@pytest.fixture(scope="module")
def program() -> Iterator[tuple[Any, int]]:
    from bcc import BPF

    b = compile_program(bpf_dir(), "packetparser.c", {"RETINAD_ADVANCED": 1})
    yield b, b.load_func(b"pp_host_ingress", BPF.SCHED_CLS).fd
    b.cleanup()


def kernel_reading(b: Any, fd: int, frame: bytes) -> Reading | None:
    """Run the frame once; what the maps gained. None if the kernel refused to build an
    skb from it (BPF_PROG_TEST_RUN: shorter than the L2 + L3 fixed header)."""
    unparsed = b[b"pp_unparsed"]
    slots = {
        r: abi.unparsed_slot(i, True, abi.DIR_INGRESS) for i, r in enumerate(abi.UNPARSED_REASONS)
    }
    before = {r: int(unparsed.sum(unparsed.Key(s)).value) for r, s in slots.items()}
    try:
        assert prog_test_run(fd, frame) == -1, "always TC_ACT_UNSPEC"
    except OSError as err:
        if err.errno == errno.EINVAL:
            return None
        raise
    gained = [r for r, s in slots.items() if int(unparsed.sum(unparsed.Key(s)).value) != before[r]]
    table = b[b"pp_endpoint"]
    entries = list(table.keys())
    if gained:
        assert entries == [], f"not counted under {gained} but an endpoint key was added"
        assert len(gained) == 1
        return Reading(gained[0])
    assert len(entries) == 1, f"neither counted nor unparsed ({len(entries)} keys)"
    key = abi.EndpointKey.from_buffer_copy(bytes(entries[0]))
    per_cpu = table[entries[0]]
    packets = sum(int(v.packets) for v in per_cpu)
    nbytes = sum(int(v.bytes) for v in per_cpu)
    flags = tuple(sum(int(v.tcp_flags[i]) for v in per_cpu) for i in range(abi.TCP_NFLAGS))
    table.clear()
    b[b"pp_iface"].clear()
    assert key.direction == abi.DIR_INGRESS and key.ifindex == 1
    assert packets == 1
    return Reading(None, key.family, bytes(key.addr), nbytes, flags)


def test_parser_agrees_with_scapy_on_20000_seeded_frames(program: tuple[Any, int]) -> None:
    b, fd = program
    rng = random.Random(SEED)
    pool = [valid(rng) for _ in range(POOL)]
    ran, refused = Counter[str](), 0
    diffs: list[str] = []
    for i in range(FRAMES):
        frame = mutate(rng, rng.choice(pool))
        got = kernel_reading(b, fd, frame)
        if got is None:
            refused += 1
            continue
        want = oracle(frame)
        ran[want.reason or "counted"] += 1
        if got != want and len(diffs) < 5:
            diffs.append(f"frame {i} {frame.hex()}: kernel {got} scapy {want}")
    print(f"outcomes {dict(ran)}, refused by BPF_PROG_TEST_RUN {refused}")
    assert diffs == []
    assert sum(ran.values()) >= 20000, (ran, refused)
    # Every outcome is exercised, each many times.
    assert set(ran) == {"counted", *abi.UNPARSED_REASONS}, ran
    assert min(ran.values()) >= 100, ran
