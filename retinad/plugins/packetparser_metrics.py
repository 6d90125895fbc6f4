"""Turn one read of packetparser's kernel maps into metric families (pure, no I/O).

The plugin reads the maps (batch lookups, per-CPU values summed) and hands the records
here with the resolver and the [metrics] settings; endpoint and remote keys are named
here as ledger Records, and the plugin's SeriesLedgers (exporter/ledger.py) turn them
into totals that survive owner changes and expire after the grace period. Keeping this
pure lets the unit tests feed literal keys and values.

Attribution rules:
* Basic series sum the per-interface map by direction (only host interfaces feed it).
* Endpoint series name each key's address: when it is on a container veth, each resolver
  in [resolvers].order is asked for the interface, then the address, and the first that
  knows either names it (so a pod known by address beats the host resolver's interface
  name); elsewhere ``by_ip``; else UNKNOWN_ENDPOINT; the overflow key becomes
  OVERFLOW_ENDPOINT. Keys that end up with the same labels are summed.
* A packet of a container that is routed without NAT is seen twice: on the container's
  veth and on the host interface it leaves by. Its address then appears in a key of a
  container interface, and its keys on host interfaces are left out, so each packet counts
  once for its endpoint.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import cast

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from retinad.config.schema import MetricsSettings
from retinad.exporter import naming
from retinad.exporter.ledger import Labels, Record, Values
from retinad.kernel import abi
from retinad.model import OVERFLOW_ENDPOINT, UNKNOWN_ENDPOINT, Direction, Endpoint
from retinad.resolvers.base import Resolver, ResolverChain

DIRECTIONS = (Direction.INGRESS, Direction.EGRESS)
Family = CounterMetricFamily | GaugeMetricFamily
"""What MetricSpec.family() returns: a counter (prometheus naming) or a gauge (retina)."""


def _family(spec: naming.MetricSpec, metrics: MetricsSettings, *, ip_label: bool) -> Family:
    return cast(Family, spec.family(metrics.naming, ip_label=ip_label))


@dataclass
class Totals:
    """Summed counts for one label set."""

    packets: int = 0
    bytes: int = 0
    flags: list[int] = field(default_factory=lambda: [0] * abi.TCP_NFLAGS)

    def add(self, v: abi.TrafficValue) -> None:
        self.packets += v.packets
        self.bytes += v.bytes
        for i in range(abi.TCP_NFLAGS):
            self.flags[i] += v.tcp_flags[i]


@dataclass(frozen=True)
class Reading:
    """One scrape's worth of map contents and the interface roles they refer to."""

    iface: Sequence[tuple[abi.IfaceKey, abi.TrafficValue]]
    endpoint: Sequence[tuple[abi.EndpointKey, abi.TrafficValue]] | None = None
    remote: Sequence[tuple[abi.RemoteKey, abi.TrafficValue]] | None = None
    container_ifindexes: frozenset[int] = frozenset()
    """Interfaces attached (now or earlier in this run) as container veths."""


def direction_label(raw: int) -> str:
    try:
        return Direction(raw).label
    except ValueError:
        return Direction.UNKNOWN.label


def basic_families(reading: Reading, metrics: MetricsSettings) -> list[Metric]:
    """retinad_forward_{packets,bytes}_total{direction}, retinad_tcp_flags_total{flag,...}."""
    per_dir = {d.label: Totals() for d in DIRECTIONS}
    for key, value in reading.iface:
        per_dir.setdefault(direction_label(key.direction), Totals()).add(value)
    packets = _family(naming.FORWARD_PACKETS, metrics, ip_label=False)
    nbytes = _family(naming.FORWARD_BYTES, metrics, ip_label=False)
    flags = _family(naming.TCP_FLAGS, metrics, ip_label=False)
    for d, t in sorted(per_dir.items()):
        packets.add_metric([d], t.packets)
        nbytes.add_metric([d], t.bytes)
        for i, flag in enumerate(abi.TCP_FLAG_NAMES):
            flags.add_metric([flag, d], t.flags[i])
    return [packets, nbytes, flags]


def _ip(raw: bytes | Iterable[int], family: int) -> str:
    return abi.decode_addr(bytes(raw), family)


def _endpoint_of(
    resolver: Resolver, ifindex: int, addr: str, family: int, *, by_ifindex: bool
) -> Endpoint:
    if family == abi.FAMILY_OVERFLOW:
        return OVERFLOW_ENDPOINT
    ip = ipaddress.ip_address(addr)
    if by_ifindex and isinstance(resolver, ResolverChain):
        ep = resolver.by_interface_or_ip(ifindex, ip)
    elif by_ifindex:
        ep = resolver.by_ifindex(ifindex) or resolver.by_ip(ip)
    else:
        ep = resolver.by_ip(ip)
    return ep if ep is not None else UNKNOWN_ENDPOINT


def _container_addrs(reading: Reading) -> set[tuple[int, bytes]]:
    return {
        (k.family, bytes(k.addr))
        for k, _ in reading.endpoint or ()
        if k.ifindex in reading.container_ifindexes and k.family != abi.FAMILY_OVERFLOW
    }


def traffic_values(v: abi.TrafficValue) -> Values:
    """A map value as the ledger's tuple: packets, bytes, then the TCP flag counts."""
    return (v.packets, v.bytes, *v.tcp_flags)


def _overflow_labels(n_endpoints: int, ip_label: bool) -> Callable[[Labels], Labels]:
    """Cap overflow: keep the direction, replace each endpoint's labels by overflow's."""
    ep = tuple(naming.endpoint_label_values(OVERFLOW_ENDPOINT, "", ip_label=ip_label))
    return lambda labels: (labels[0], *(ep * n_endpoints))


def endpoint_overflow(metrics: MetricsSettings) -> Callable[[Labels], Labels]:
    return _overflow_labels(1, metrics.ip_label)


def remote_overflow(metrics: MetricsSettings) -> Callable[[Labels], Labels]:
    return _overflow_labels(2, metrics.ip_label)


def _is_live(ep: Endpoint) -> bool:
    return ep is not UNKNOWN_ENDPOINT


def endpoint_records(
    reading: Reading, resolver: Resolver, metrics: MetricsSettings
) -> list[Record]:
    """Name each per-endpoint key (advanced mode); the ledger turns them into series."""
    ip_label = metrics.ip_label
    containers = _container_addrs(reading)
    records: list[Record] = []
    for key, value in reading.endpoint or ():
        on_container = key.ifindex in reading.container_ifindexes
        if not on_container and (key.family, bytes(key.addr)) in containers:
            continue  # the same packets are counted on the container's veth
        addr = "" if key.family == abi.FAMILY_OVERFLOW else _ip(key.addr, key.family)
        ep = _endpoint_of(resolver, key.ifindex, addr, key.family, by_ifindex=on_container)
        labels = (
            direction_label(key.direction),
            *naming.endpoint_label_values(ep, addr, ip_label=ip_label),
        )
        records.append(Record(bytes(key), labels, traffic_values(value), _is_live(ep)))
    return records


def endpoint_families(totals: Mapping[Labels, Values], metrics: MetricsSettings) -> list[Metric]:
    """Per-endpoint forward and TCP flag series from the ledger's totals."""
    ip_label = metrics.ip_label
    packets = _family(naming.ENDPOINT_FORWARD_PACKETS, metrics, ip_label=ip_label)
    nbytes = _family(naming.ENDPOINT_FORWARD_BYTES, metrics, ip_label=ip_label)
    flags = _family(naming.ENDPOINT_TCP_FLAGS, metrics, ip_label=ip_label)
    for labels, t in sorted(totals.items()):
        packets.add_metric(list(labels), t[0])
        nbytes.add_metric(list(labels), t[1])
        for i, flag in enumerate(abi.TCP_FLAG_NAMES):
            if t[2 + i]:  # an endpoint's flag series appears with its first such packet
                flags.add_metric([flag, *labels], t[2 + i])
    return [packets, nbytes, flags]


def remote_records(reading: Reading, resolver: Resolver, metrics: MetricsSettings) -> list[Record]:
    """Name each (local endpoint, remote endpoint) key (remote context)."""
    ip_label = metrics.ip_label
    records: list[Record] = []
    for key, value in reading.remote or ():
        if key.family == abi.FAMILY_OVERFLOW:
            local, remote, lip, rip = OVERFLOW_ENDPOINT, OVERFLOW_ENDPOINT, "", ""
        else:
            lip, rip = _ip(key.local, key.family), _ip(key.remote, key.family)
            on_container = key.ifindex in reading.container_ifindexes
            local = _endpoint_of(resolver, key.ifindex, lip, key.family, by_ifindex=on_container)
            remote = _endpoint_of(resolver, key.ifindex, rip, key.family, by_ifindex=False)
        labels = (
            direction_label(key.direction),
            *naming.endpoint_label_values(local, lip, ip_label=ip_label),
            *naming.endpoint_label_values(remote, rip, ip_label=ip_label),
        )
        live = _is_live(local) and _is_live(remote)
        records.append(Record(bytes(key), labels, traffic_values(value), live))
    return records


def remote_families(totals: Mapping[Labels, Values], metrics: MetricsSettings) -> list[Metric]:
    """Per (local endpoint, remote endpoint) forward series from the ledger's totals."""
    ip_label = metrics.ip_label
    packets = _family(naming.REMOTE_FORWARD_PACKETS, metrics, ip_label=ip_label)
    nbytes = _family(naming.REMOTE_FORWARD_BYTES, metrics, ip_label=ip_label)
    for labels, t in sorted(totals.items()):
        packets.add_metric(list(labels), t[0])
        nbytes.add_metric(list(labels), t[1])
    return [packets, nbytes]


def overflow_packets(
    maps: Iterable[tuple[str, Sequence[tuple[object, abi.TrafficValue]] | None]],
) -> Metric:
    """retinad_map_overflow_packets_total{map}: packets counted in each map's overflow keys."""
    fam = CounterMetricFamily(
        naming.MAP_OVERFLOW_PACKETS,
        "Packets counted in a map's overflow series because the map was full.",
        labels=["map"],
    )
    for name, records in maps:
        if records is None:
            continue
        total = 0
        for key, value in records:
            overflow = getattr(key, "family", None) == abi.FAMILY_OVERFLOW or (
                isinstance(key, abi.IfaceKey) and key.ifindex == 0
            )
            if overflow:
                total += value.packets
        fam.add_metric([name], total)
    return fam
