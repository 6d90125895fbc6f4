"""From a kernel flow event to an enriched flow record (docs/FLOWS.md is its schema).

A record is a plain dict of JSON types, so the flow log, stdout and `retinad flows` write
the same thing: time, both addresses and ports, protocol, direction, TCP flags, packets and
bytes since the last report, both endpoints' names from the resolver chain, and the
observation point (interface name, index and role). Naming happens here, in the writer
thread, never in the drain thread or the kernel.
"""

from __future__ import annotations

import datetime as dt
import functools
import ipaddress
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any

from retinad.kernel import abi
from retinad.model import Endpoint
from retinad.plugins.packetparser_metrics import direction_label
from retinad.resolvers.base import IPAddress

SCHEMA_VERSION = 1
PROTOCOLS = {6: "TCP", 17: "UDP"}

Record = dict[str, Any]
InterfaceNames = Callable[[], Mapping[int, tuple[str, str]]]
"""ifindex -> (interface name, role "host" | "container") of the attached interfaces."""


class Clock:
    """bpf_ktime_get_ns() (CLOCK_MONOTONIC) to wall-clock time.

    The offset is taken again at most every RESYNC_NS (to follow clock steps), not per
    batch: two reports of one flow must show the same first_seen."""

    RESYNC_NS = 60_000_000_000

    def __init__(self) -> None:
        self.offset_ns = 0
        self._synced_at = 0
        self.sync(force=True)

    def sync(self, *, force: bool = False) -> None:
        mono = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        if force or mono - self._synced_at >= self.RESYNC_NS:
            self.offset_ns = time.time_ns() - mono
            self._synced_at = mono

    def iso(self, mono_ns: int) -> str:
        wall = (mono_ns + self.offset_ns) / 1e9
        stamp = dt.datetime.fromtimestamp(wall, tz=dt.UTC)
        return stamp.isoformat(timespec="microseconds").replace("+00:00", "Z")


@functools.lru_cache(maxsize=65536)
def address(raw: bytes, family: int) -> tuple[IPAddress, str]:
    """A 16-byte event address as an address object and its text, from the bytes (no
    text parsing); cached, since a host sees the same few addresses over and over."""
    ip: IPAddress
    if family == abi.FAMILY_IPV4:
        ip = ipaddress.IPv4Address(raw[12:16])
    else:
        ip = ipaddress.IPv6Address(raw)
    return ip, str(ip)


def port(raw: int) -> int:
    """A port the kernel stored in network order, read as a little-endian u16."""
    return ((raw & 0xFF) << 8) | (raw >> 8)


def endpoint_view(ep: Endpoint | None) -> dict[str, str] | None:
    if ep is None:
        return None
    return {"name": ep.name, "namespace": ep.namespace, "workload_kind": ep.workload_kind,
            "workload_name": ep.workload_name}  # fmt: skip


class RecordMaker:
    """Turns FlowEvents into records; holds what naming needs (resolver, interfaces)."""

    def __init__(self, resolver: Any, interfaces: InterfaceNames, aggregation: str) -> None:
        self._resolver = resolver
        self._interfaces = interfaces
        self._aggregation = aggregation
        self.clock = Clock()
        self.node = socket.gethostname()

    def _name(self, raw: Any, family: int) -> tuple[str, dict[str, str] | None]:
        ip, text = address(bytes(raw), family)
        try:
            ep = self._resolver.by_ip(ip)
        except Exception:  # a resolver bug must not stop the flow log
            ep = None
        return text, endpoint_view(ep)

    def _by_ifindex(self, ifindex: int) -> dict[str, str] | None:
        try:
            return endpoint_view(self._resolver.by_ifindex(ifindex))
        except Exception:
            return None

    def make(self, ev: abi.FlowEvent, ifnames: Mapping[int, tuple[str, str]]) -> Record:
        src_ip, src = self._name(ev.src, ev.family)
        dst_ip, dst = self._name(ev.dst, ev.family)
        if not ev.host:  # a container veth: its container is the local end, named by it
            local = self._by_ifindex(ev.ifindex)
            if ev.direction == abi.DIR_EGRESS and src is None:
                src = local
            elif ev.direction == abi.DIR_INGRESS and dst is None:
                dst = local
        name, _role = ifnames.get(ev.ifindex, ("", ""))
        return {
            "version": SCHEMA_VERSION,
            "time": self.clock.iso(ev.ts_ns),
            "first_seen": self.clock.iso(ev.first_ns),
            "node": self.node,
            "interface": {
                "name": name,
                "ifindex": ev.ifindex,
                "role": "host" if ev.host else "container",
            },
            "direction": direction_label(ev.direction),
            "protocol": PROTOCOLS.get(ev.l4proto, str(ev.l4proto)),
            "src_ip": src_ip,
            "src_port": port(ev.sport),
            "dst_ip": dst_ip,
            "dst_port": port(ev.dport),
            "src": src,
            "dst": dst,
            "tcp_flags": abi.tcp_flag_names(ev.tcp_flags),
            "packets": ev.packets,
            "bytes": ev.bytes,
            "reason": abi.FE_REASONS[ev.reason] if ev.reason < len(abi.FE_REASONS) else "?",
            "aggregation": self._aggregation,
        }

    def make_batch(self, events: list[abi.FlowEvent]) -> list[Record]:
        self.clock.sync()
        ifnames = self._interfaces()
        return [self.make(ev, ifnames) for ev in events]
