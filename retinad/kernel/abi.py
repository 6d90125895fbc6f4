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


# ---- latency (bpf/retinad.h "---- latency ----") ----

LAT_EDGES_NS = (
    100_000, 200_000, 300_000, 500_000,
    1_000_000, 2_000_000, 3_000_000, 5_000_000,
    10_000_000, 20_000_000, 30_000_000, 50_000_000,
    100_000_000, 200_000_000, 300_000_000, 500_000_000,
    1_000_000_000, 2_000_000_000, 3_000_000_000, 5_000_000_000,
    10_000_000_000,
)  # fmt: skip
"""Histogram bucket upper bounds (ns), as lat_bucket() in bpf/latency.h compares them."""
LAT_NBUCKETS = len(LAT_EDGES_NS) + 1
"""RETINAD_LAT_NBUCKETS: the last bucket is +Inf."""
LAT_MAX_TARGETS = 256
LAT_MAX_PREFIXES = 1024
LAT_STAGE_HANDSHAKE = 0
LAT_STAGE_REQUEST = 1
LAT_STAGE_CONN = 2
LAT_STAGE_NAMES = ("handshake", "request")
"""RETINAD_LAT_STAGE_* with a histogram, in order (the ``stage`` label)."""


def latency_slot(target: int, stage: int, direction: int) -> int:
    """RETINAD_LAT_SLOT: the index into the lat_hist per-CPU array."""
    return (target * len(LAT_STAGE_NAMES) + stage) * 2 + int(direction == DIR_EGRESS)


class LatencyTargetKey(ctypes.Structure):
    _fields_ = [
        ("prefixlen", ctypes.c_uint32),
        ("port", ctypes.c_uint8 * 2),
        ("addr", Addr16),
        ("pad", ctypes.c_uint8 * 2),
    ]


class LatencyConnKey(ctypes.Structure):
    _fields_ = [
        ("client", Addr16),
        ("server", Addr16),
        ("client_port", ctypes.c_uint16),
        ("server_port", ctypes.c_uint16),
        ("stage", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 3),
    ]


class LatencyPending(ctypes.Structure):
    _fields_ = [
        ("start_ns", ctypes.c_uint64),
        ("seq", ctypes.c_uint32),
        ("target", ctypes.c_uint16),
        ("direction", ctypes.c_uint8),
        ("pad", ctypes.c_uint8),
    ]


class LatencyHist(ctypes.Structure):
    _fields_ = [
        ("buckets", ctypes.c_uint64 * LAT_NBUCKETS),
        ("sum_ns", ctypes.c_uint64),
        ("no_response", ctypes.c_uint64),
    ]


ABI_STRUCTS.update(
    {
        "latency_target_key": LatencyTargetKey,
        "latency_conn_key": LatencyConnKey,
        "latency_pending": LatencyPending,
        "latency_hist": LatencyHist,
    }
)

# ---- flow events ----------------------------------------------------------------------

FE_RINGBUF = 1
FE_PERF = 2
TRANSPORTS = {"ringbuf": FE_RINGBUF, "perf": FE_PERF}
"""RETINAD_FE_RINGBUF / RETINAD_FE_PERF: the value of -DRETINAD_FE_TRANSPORT."""

FE_STAT_SUBMITTED = 0
FE_STAT_LOST = 1
FE_STAT_SAMPLED = 2
FE_STAT_UNTRACKED = 3
FE_NSTATS = 4
"""RETINAD_FE_STAT_*: slots of the fe_stats per-CPU array."""

FE_REASONS = ("packet", "new", "flags", "interval", "untracked", "idle", "flush")
"""RETINAD_FE_REASON_* in order: why an event was reported (flow_event.reason)."""
FE_REASON_IDLE = 5
FE_REASON_FLUSH = 6


class FlowEvent(ctypes.Structure):
    _fields_ = [
        ("ts_ns", ctypes.c_uint64),
        ("first_ns", ctypes.c_uint64),
        ("packets", ctypes.c_uint64),
        ("bytes", ctypes.c_uint64),
        ("src", Addr16),
        ("dst", Addr16),
        ("ifindex", ctypes.c_uint32),
        ("sport", ctypes.c_uint16),  # network order
        ("dport", ctypes.c_uint16),
        ("family", ctypes.c_uint8),
        ("l4proto", ctypes.c_uint8),
        ("direction", ctypes.c_uint8),
        ("tcp_flags", ctypes.c_uint8),
        ("reason", ctypes.c_uint8),
        ("host", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 2),
    ]


class FlowKey(ctypes.Structure):
    _fields_ = [
        ("src", Addr16),
        ("dst", Addr16),
        ("ifindex", ctypes.c_uint32),
        ("sport", ctypes.c_uint16),  # network order
        ("dport", ctypes.c_uint16),
        ("family", ctypes.c_uint8),
        ("l4proto", ctypes.c_uint8),
        ("direction", ctypes.c_uint8),
        ("host", ctypes.c_uint8),
    ]


class FlowState(ctypes.Structure):
    _fields_ = [
        ("packets", ctypes.c_uint64),
        ("bytes", ctypes.c_uint64),
        ("reported_packets", ctypes.c_uint64),
        ("reported_bytes", ctypes.c_uint64),
        ("first_ns", ctypes.c_uint64),
        ("last_ns", ctypes.c_uint64),
        ("last_report_ns", ctypes.c_uint64),
        ("flags_seen", ctypes.c_uint8),
        ("flags_pending", ctypes.c_uint8),
        ("sampled_out", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 5),
    ]


ABI_STRUCTS.update({"flow_event": FlowEvent, "flow_key": FlowKey, "flow_state": FlowState})


def tcp_flag_names(flags: int) -> list[str]:
    """TCP header byte 13 as flag names, in header bit order (FIN first)."""
    return [name for i, name in enumerate(TCP_FLAG_NAMES) if flags & (1 << i)]
