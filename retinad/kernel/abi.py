"""ctypes mirror of bpf/retinad.h: the one Python definition of the kernel ABI.

Field for field the same as the C header; tests/kernel/test_abi.py compiles the header with
bcc and checks sizes and offsets against these classes, so a drift fails the suite.
"""

from __future__ import annotations

import ctypes
import ipaddress

DIR_UNKNOWN = 0
DIR_INGRESS = 1
DIR_EGRESS = 2

FAMILY_NONE = 0
FAMILY_IPV4 = 4
FAMILY_IPV6 = 6
FAMILY_OVERFLOW = 255

HOOK_REASON_NAMES: dict[int, str] = {
    0: "IPTABLE_RULE_DROP",
    1: "IPTABLE_NAT_DROP",
    2: "TCP_CONNECT_BASIC",
    3: "TCP_ACCEPT_BASIC",
    5: "CONNTRACK_ADD_DROP",
}
"""drop_key.reason of the fallback source (RETINAD_HOOK_* in retinad.h): Retina's own
category numbers and names (4, TCP_CLOSE_BASIC, has no hook even in Retina)."""

TCP_FLAG_NAMES = ("FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR")
"""Index i of traffic_value.tcp_flags counts packets with this flag (RETINAD_TCP_*)."""
TCP_NFLAGS = len(TCP_FLAG_NAMES)

UNPARSED_REASONS = ("not_ip", "truncated", "bad_header", "not_tcp_udp", "ipv6_ext_chain")
"""RETINAD_UNPARSED_* in order: why packetparser did not count a frame."""


def unparsed_slot(reason: int, host: bool, direction: int) -> int:
    """RETINAD_UNPARSED_SLOT: the index into the pp_unparsed per-CPU array."""
    return (reason * 2 + int(host)) * 2 + int(direction == DIR_EGRESS)


UNPARSED_SLOTS = len(UNPARSED_REASONS) * 4

Addr16 = ctypes.c_uint8 * 16


class IfaceKey(ctypes.Structure):
    _fields_ = [
        ("ifindex", ctypes.c_uint32),
        ("direction", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 3),
    ]


class TrafficValue(ctypes.Structure):
    _fields_ = [
        ("packets", ctypes.c_uint64),
        ("bytes", ctypes.c_uint64),
        ("tcp_flags", ctypes.c_uint64 * TCP_NFLAGS),
    ]


class EndpointKey(ctypes.Structure):
    _fields_ = [
        ("addr", Addr16),
        ("ifindex", ctypes.c_uint32),
        ("direction", ctypes.c_uint8),
        ("family", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 2),
    ]


class RemoteKey(ctypes.Structure):
    _fields_ = [
        ("local", Addr16),
        ("remote", Addr16),
        ("ifindex", ctypes.c_uint32),
        ("direction", ctypes.c_uint8),
        ("family", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 2),
    ]


class DropKey(ctypes.Structure):
    _fields_ = [
        ("reason", ctypes.c_uint32),
        ("direction", ctypes.c_uint8),
        ("proto", ctypes.c_uint8),
        ("family", ctypes.c_uint8),
        ("pad", ctypes.c_uint8),
        ("addr", Addr16),
    ]


class DropValue(ctypes.Structure):
    _fields_ = [("packets", ctypes.c_uint64), ("bytes", ctypes.c_uint64)]


ABI_STRUCTS: dict[str, type[ctypes.Structure]] = {
    "iface_key": IfaceKey,
    "traffic_value": TrafficValue,
    "endpoint_key": EndpointKey,
    "remote_key": RemoteKey,
    "drop_key": DropKey,
    "drop_value": DropValue,
}
"""C struct name -> mirror, for the layout test."""


def decode_addr(raw: bytes | ctypes.Array[ctypes.c_uint8], family: int) -> str:
    """Render a 16-byte key address: IPv4 keys hold IPv4-mapped IPv6 (::ffff:a.b.c.d)."""
    b = bytes(raw)
    if family == FAMILY_IPV4:
        return str(ipaddress.IPv4Address(b[12:16]))
    return str(ipaddress.IPv6Address(b))
