"""Turn one read of packetparser's kernel maps into metric families (pure, no I/O).

The plugin reads the maps (batch lookups, per-CPU values summed) and hands the records
here with the resolver and the [metrics] settings; endpoint and remote keys are named
here as ledger Records, and the plugin's SeriesLedgers (exporter/ledger.py) turn them
into totals that survive owner changes and expire after the grace period. Keeping this
pure lets the unit tests feed literal keys and values.

Attribution rules:
* Basic series sum the per-interface map by direction (only host interfaces feed it).
* Endpoint series name each key's address by the interface (when it is attached as a
  container veth) and the address, else UNKNOWN_ENDPOINT; the overflow key becomes
  OVERFLOW_ENDPOINT. Keys that end up with the same labels are summed.
* Endpoint and remote series name each key with the chain's one lookup rule
  (``ResolverChain.endpoint``): resolver by resolver in order, by the container veth the
  key was counted on, then by address.
* A packet of a container that is routed without NAT is seen twice: on the container's
  veth and on the host interface it leaves by. Its address then appears in a key of a
  container interface, and its keys on host interfaces (endpoint and remote maps) are
  named UNCOUNTED (exporter/ledger.py): bound, never exported, and taken out of the map
  when that changes, so each packet counts once for its endpoint, over any number of
  scrapes and owner changes.
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
from retinad.exporter.ledger import UNCOUNTED, Labels, Record, Values
from retinad.kernel import abi
from retinad.model import OVERFLOW_ENDPOINT, UNKNOWN_ENDPOINT, Direction, Endpoint
from retinad.resolvers.base import ResolverChain

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
    resolver: ResolverChain, ifindex: int, addr: str, family: int, *, by_ifindex: bool
) -> Endpoint:
    if family == abi.FAMILY_OVERFLOW:
        return OVERFLOW_ENDPOINT
    ep = resolver.endpoint(ipaddress.ip_address(addr), ifindex if by_ifindex else None)
    return ep if ep is not None else UNKNOWN_ENDPOINT


def container_addresses(reading: Reading) -> dict[tuple[int, bytes], int]:
    """(family, 16-byte address) -> container veth ifindex, for every address a key of a
    container veth counts (endpoint map, and remote map's local side)."""
    found: dict[tuple[int, bytes], int] = {}
    for k, _ in reading.endpoint or ():
        if k.ifindex in reading.container_ifindexes and k.family != abi.FAMILY_OVERFLOW:
            found[(k.family, bytes(k.addr))] = k.ifindex
    for rk, _ in reading.remote or ():
        if rk.ifindex in reading.container_ifindexes and rk.family != abi.FAMILY_OVERFLOW:
            found.setdefault((rk.family, bytes(rk.local)), rk.ifindex)
    return found


def note_container_addresses(reading: Reading, resolver: ResolverChain) -> None:
    """Tell the chain which veth each container address sits behind (for drop series)."""
    behind = {
        ipaddress.ip_address(_ip(raw, fam)): idx
        for (fam, raw), idx in container_addresses(reading).items()
    }
    resolver.note_container_addresses(behind)


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
    if metrics.naming == "retina":  # Retina's shape: direction, source, destination
        side = naming.pair_side_values(OVERFLOW_ENDPOINT, "")
        return lambda labels: (labels[0], *side, *side)
    return _overflow_labels(2, metrics.ip_label)


def _is_live(ep: Endpoint) -> bool:
    return ep is not UNKNOWN_ENDPOINT


def endpoint_records(
    reading: Reading, resolver: ResolverChain, metrics: MetricsSettings
) -> list[Record]:
    """Name each per-endpoint key (advanced mode); the ledger turns them into series.

    A host-interface key of an address that a container veth key also counts holds the
    same packets a second time (routed container traffic): it is named UNCOUNTED, so the
    ledger keeps it bound but exports nothing from it, and takes it out of the map when
    its name changes, so its history never comes back under a name.
    """
    ip_label = metrics.ip_label
    containers = container_addresses(reading)
    records: list[Record] = []
    for key, value in reading.endpoint or ():
        on_container = key.ifindex in reading.container_ifindexes
        if not on_container and (key.family, bytes(key.addr)) in containers:
            records.append(Record(bytes(key), UNCOUNTED, traffic_values(value), True))
            continue
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


def remote_records(
    reading: Reading, resolver: ResolverChain, metrics: MetricsSettings
) -> list[Record]:
    """Name each (local endpoint, remote endpoint) key (remote context)."""
    ip_label = metrics.ip_label
    containers = container_addresses(reading)
    records: list[Record] = []
    for key, value in reading.remote or ():
        on_container = key.ifindex in reading.container_ifindexes
        if not on_container and (key.family, bytes(key.local)) in containers:
            records.append(Record(bytes(key), UNCOUNTED, traffic_values(value), True))
            continue  # counted on the container's veth (see endpoint_records)
        if key.family == abi.FAMILY_OVERFLOW:
            local, remote, lip, rip = OVERFLOW_ENDPOINT, OVERFLOW_ENDPOINT, "", ""
        else:
            lip, rip = _ip(key.local, key.family), _ip(key.remote, key.family)
            local = _endpoint_of(resolver, key.ifindex, lip, key.family, by_ifindex=on_container)
            remote = _endpoint_of(resolver, key.ifindex, rip, key.family, by_ifindex=False)
        direction = direction_label(key.direction)
        if metrics.naming == "retina":
            labels: Labels = naming.pair_label_values(
                direction, naming.pair_side_values(local, lip), naming.pair_side_values(remote, rip)
            )
        else:
            labels = (
                direction,
                *naming.endpoint_label_values(local, lip, ip_label=ip_label),
                *naming.endpoint_label_values(remote, rip, ip_label=ip_label),
            )
        live = _is_live(local) and _is_live(remote)
        records.append(Record(bytes(key), labels, traffic_values(value), live))
    return records


def remote_families(totals: Mapping[Labels, Values], metrics: MetricsSettings) -> list[Metric]:
    """Per (local endpoint, remote endpoint) forward series from the ledger's totals.

    In retina naming these are Retina's own remote-context series (exporter/naming.py,
    ``retina_pair_shape``): adv_forward_count, adv_forward_bytes and adv_tcpflags_count
    by direction, source and destination.
    """
    if metrics.naming == "retina":
        return pair_families(totals)
    ip_label = metrics.ip_label
    packets = _family(naming.REMOTE_FORWARD_PACKETS, metrics, ip_label=ip_label)
    nbytes = _family(naming.REMOTE_FORWARD_BYTES, metrics, ip_label=ip_label)
    for labels, t in sorted(totals.items()):
        packets.add_metric(list(labels), t[0])
        nbytes.add_metric(list(labels), t[1])
    return [packets, nbytes]


def pair_families(totals: Mapping[Labels, Values]) -> list[Metric]:
    """Retina's remote-context forward, byte and flag series from the pair totals."""
    packets = naming.pair_family(naming.REMOTE_FORWARD_PACKETS)
    nbytes = naming.pair_family(naming.REMOTE_FORWARD_BYTES)
    flags = naming.pair_family(naming.ENDPOINT_TCP_FLAGS)
    for labels, t in sorted(totals.items()):
        direction, *sides = labels
        packets.add_metric(list(labels), t[0])
        nbytes.add_metric(list(labels), t[1])
        for i, flag in enumerate(abi.TCP_FLAG_NAMES):
            if t[2 + i]:
                flags.add_metric([flag, direction, *sides], t[2 + i])
    return [packets, nbytes, flags]


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
