"""Every metric name and label set retinad exports, in both namings.

This module is the only place names are spelled. ``prometheus`` naming follows the
Prometheus conventions (retinad_ prefix, base units, counters end in _total). ``retina``
naming reproduces Microsoft Retina's names and label names so its dashboards work; Retina
exports its counts as gauges set from cumulative totals (names ending in _count or
_bytes), and prometheus_client would append _total to a counter, so in retina naming the
same values are exported as gauges, exactly as Retina does.

Self metrics (build info, scrape meta, maps, attach errors) keep their retinad_ names in
both namings: they describe retinad, not the network.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from retinad.metric_names import RESOLVER_ENDPOINTS as RESOLVER_ENDPOINTS
from retinad.metric_names import RESOLVER_UP as RESOLVER_UP
from retinad.model import UNKNOWN_ENDPOINT, Endpoint

Naming = Literal["prometheus", "retina"]

ENDPOINT_LABELS: dict[Naming, tuple[str, ...]] = {
    "prometheus": ("namespace", "name", "workload_kind", "workload_name"),
    "retina": ("namespace", "podname", "workload_kind", "workload_name"),
}
"""Labels naming an endpoint, in each naming; ``ip`` is added first when [metrics].ip_label."""

REMOTE_PREFIX: dict[Naming, str] = {"prometheus": "remote_", "retina": "destination_"}
"""Prefix of the far end's labels in prometheus naming's remote-context series. Retina
naming's have Retina's shape (``pair_label_names``): the far end is destination_ of what
the endpoint sends and source_ of what it receives."""

PAIR_SIDE_LABELS = ("ip", "namespace", "podname", "workload_kind", "workload_name")
"""One side's labels in Retina's remote-context series, after ``source_``/``destination_``
(Retina's default context options ip, namespace, podname, workload; pkg/module/metrics/
types.go). The address is always there: Retina's pod-level dashboard breaks unknown pods
down by ``source_ip``/``destination_ip``."""

_SIDES = ("source_", "destination_")

PAIR_UNKNOWN = "unknown"
"""What Retina writes for every label of a side it cannot name."""


@dataclass(frozen=True)
class MetricSpec:
    """One metric: its name and fixed labels in each naming."""

    key: str
    """Stable internal key used by plugins (never exported)."""
    prometheus: str
    """Name in prometheus naming, without the _total a counter gets on exposition."""
    retina: str
    """Name in retina naming (exported as a gauge, as Retina does)."""
    help: str
    labels: tuple[str, ...]
    """Fixed labels (same names in both namings), before any endpoint labels."""
    endpoint: bool = False
    """Whether endpoint labels follow the fixed labels."""
    remote: bool = False
    """Whether remote-endpoint labels follow the endpoint labels (remote context). In
    retina naming such a series has Retina's shape instead: source_* then destination_*
    (``pair_label_names``), under the same name as the per-endpoint one it replaces."""

    def name(self, naming: Naming) -> str:
        return self.prometheus if naming == "prometheus" else self.retina

    def label_names(self, naming: Naming, *, ip_label: bool) -> list[str]:
        if self.remote and naming == "retina":
            return pair_label_names(self.labels)
        names = list(self.labels)
        if self.endpoint:
            names += endpoint_label_names(naming, ip_label=ip_label)
        if self.remote:
            names += [
                REMOTE_PREFIX[naming] + n for n in endpoint_label_names(naming, ip_label=ip_label)
            ]
        return names

    def family(self, naming: Naming, *, ip_label: bool) -> Metric:
        """An empty family to add samples to (counter or gauge by naming)."""
        labels = self.label_names(naming, ip_label=ip_label)
        if naming == "prometheus":
            return CounterMetricFamily(self.prometheus, self.help, labels=labels)
        return GaugeMetricFamily(self.retina, self.help, labels=labels)


def retina_pair_shape(naming: Naming, *, remote_context: bool) -> bool:
    """Whether forward and TCP flag series take Retina's remote-context shape.

    Retina, with remote context on, puts ``source_*`` and ``destination_*`` labels on
    adv_forward_count/adv_forward_bytes/adv_tcpflags_count themselves and exports no
    per-pod series beside them; its pod-level dashboard queries exactly that. So in retina
    naming with [packetparser] remote_context, the (local, remote) pair map feeds those
    names and the per-endpoint forward and flag series are not exported (they would share
    the names and be counted twice by every sum). Prometheus naming keeps both families.
    """
    return naming == "retina" and remote_context


def pair_label_names(fixed: Sequence[str]) -> list[str]:
    """``fixed`` then source_{ip,namespace,podname,workload_*} then destination_{...}."""
    return [*fixed, *(f"{side}{label}" for side in _SIDES for label in PAIR_SIDE_LABELS)]


def pair_side_values(endpoint: Endpoint, ip: str) -> tuple[str, ...]:
    """One side's values; an endpoint no resolver knows is "unknown" throughout but its
    address, as in Retina (its dashboard shows such peers by IP)."""
    if endpoint == UNKNOWN_ENDPOINT:
        return (ip or PAIR_UNKNOWN,) + (PAIR_UNKNOWN,) * (len(PAIR_SIDE_LABELS) - 1)
    values = (endpoint.namespace, endpoint.name, endpoint.workload_kind, endpoint.workload_name)
    return (ip or PAIR_UNKNOWN, *values)


def pair_label_values(
    direction: str, local: tuple[str, ...], remote: tuple[str, ...]
) -> tuple[str, ...]:
    """``direction`` then source then destination: the local endpoint is the source of
    what it sends (egress) and the destination of what it receives (ingress)."""
    if direction == "ingress":
        return (direction, *remote, *local)
    return (direction, *local, *remote)


def pair_family(spec: MetricSpec) -> GaugeMetricFamily:
    """An empty retina-naming family of ``spec`` in Retina's remote-context shape."""
    return GaugeMetricFamily(
        spec.retina,
        spec.help + " Remote context: by source and destination.",
        labels=pair_label_names(spec.labels),
    )


def endpoint_label_names(naming: Naming, *, ip_label: bool) -> list[str]:
    return (["ip"] if ip_label else []) + list(ENDPOINT_LABELS[naming])


def endpoint_label_values(endpoint: Endpoint, ip: str, *, ip_label: bool) -> list[str]:
    """Label values for ``endpoint`` in the order of ``endpoint_label_names``."""
    values = [endpoint.namespace, endpoint.name, endpoint.workload_kind, endpoint.workload_name]
    return ([ip] if ip_label else []) + values


# --- packetparser: forward and tcpflags modules ---------------------------------------
FORWARD_PACKETS = MetricSpec(
    "forward_packets",
    "retinad_forward_packets",
    "networkobservability_forward_count",
    "TCP and UDP packets through the host's interfaces, by direction.",
    ("direction",),
)
FORWARD_BYTES = MetricSpec(
    "forward_bytes",
    "retinad_forward_bytes",
    "networkobservability_forward_bytes",
    "Bytes (with L2 header) of TCP and UDP packets through the host's interfaces, by direction.",
    ("direction",),
)
TCP_FLAGS = MetricSpec(
    "tcp_flags",
    "retinad_tcp_flags",
    "networkobservability_tcp_flag_gauges",
    "TCP packets through the host's interfaces carrying each flag, by direction.",
    ("flag", "direction"),
)
ENDPOINT_FORWARD_PACKETS = MetricSpec(
    "endpoint_forward_packets",
    "retinad_endpoint_forward_packets",
    "networkobservability_adv_forward_count",
    "TCP and UDP packets to (ingress) and from (egress) each endpoint.",
    ("direction",),
    endpoint=True,
)
ENDPOINT_FORWARD_BYTES = MetricSpec(
    "endpoint_forward_bytes",
    "retinad_endpoint_forward_bytes",
    "networkobservability_adv_forward_bytes",
    "Bytes (with L2 header) of TCP and UDP packets to and from each endpoint.",
    ("direction",),
    endpoint=True,
)
ENDPOINT_TCP_FLAGS = MetricSpec(
    "endpoint_tcp_flags",
    "retinad_endpoint_tcp_flags",
    "networkobservability_adv_tcpflags_count",
    "TCP packets to and from each endpoint carrying each flag.",
    ("flag", "direction"),
    endpoint=True,
)
REMOTE_FORWARD_PACKETS = MetricSpec(
    "remote_forward_packets",
    "retinad_endpoint_remote_forward_packets",
    "networkobservability_adv_forward_count",
    "TCP and UDP packets between each local endpoint and each remote endpoint.",
    ("direction",),
    endpoint=True,
    remote=True,
)
REMOTE_FORWARD_BYTES = MetricSpec(
    "remote_forward_bytes",
    "retinad_endpoint_remote_forward_bytes",
    "networkobservability_adv_forward_bytes",
    "Bytes of TCP and UDP packets between each local endpoint and each remote endpoint.",
    ("direction",),
    endpoint=True,
    remote=True,
)

# --- dropreason ----------------------------------------------------------------------
DROP_PACKETS = MetricSpec(
    "drop_packets",
    "retinad_drop_packets",
    "networkobservability_drop_count",
    "Packets the kernel dropped, by the kernel's drop reason and direction.",
    ("reason", "direction"),
)
DROP_BYTES = MetricSpec(
    "drop_bytes",
    "retinad_drop_bytes",
    "networkobservability_drop_bytes",
    "Bytes of packets the kernel dropped, by drop reason and direction.",
    ("reason", "direction"),
)
ENDPOINT_DROP_PACKETS = MetricSpec(
    "endpoint_drop_packets",
    "retinad_endpoint_drop_packets",
    "networkobservability_adv_drop_count",
    "Packets the kernel dropped to or from each endpoint, by drop reason and direction.",
    ("reason", "direction"),
    endpoint=True,
)
ENDPOINT_DROP_BYTES = MetricSpec(
    "endpoint_drop_bytes",
    "retinad_endpoint_drop_bytes",
    "networkobservability_adv_drop_bytes",
    "Bytes of packets the kernel dropped to or from each endpoint, by reason and direction.",
    ("reason", "direction"),
    endpoint=True,
)

ALL_SPECS: Sequence[MetricSpec] = (
    FORWARD_PACKETS,
    FORWARD_BYTES,
    TCP_FLAGS,
    ENDPOINT_FORWARD_PACKETS,
    ENDPOINT_FORWARD_BYTES,
    ENDPOINT_TCP_FLAGS,
    REMOTE_FORWARD_PACKETS,
    REMOTE_FORWARD_BYTES,
    DROP_PACKETS,
    DROP_BYTES,
    ENDPOINT_DROP_PACKETS,
    ENDPOINT_DROP_BYTES,
)

# --- self metrics (same names in both namings) ----------------------------------------
BUILD_INFO = "retinad_build_info"
SCRAPE_SUCCESS = "retinad_scrape_collector_success"
SCRAPE_DURATION = "retinad_scrape_collector_duration_seconds"
MAP_ENTRIES = "retinad_map_entries"
MAP_CAPACITY = "retinad_map_capacity"
MAP_OVERFLOW_PACKETS = "retinad_map_overflow_packets"
ATTACH_ERRORS = "retinad_attach_errors"
ATTACHED_INTERFACES = "retinad_attached_interfaces"
SERIES_DROPPED = "retinad_series_dropped"
EVENTS = "retinad_events"
EVENTS_LOST = "retinad_events_lost"
EVENTS_SAMPLED_OUT = "retinad_events_sampled_out"
# RESOLVER_UP, RESOLVER_ENDPOINTS: spelled in retinad/metric_names.py (resolvers/ needs them).


def map_gauges(maps: Sequence[tuple[str, int, int]]) -> list[Metric]:
    """retinad_map_entries/capacity{map} from (map name, entries, capacity) triples."""
    entries = GaugeMetricFamily(MAP_ENTRIES, "Entries in a retinad kernel map.", labels=["map"])
    capacity = GaugeMetricFamily(
        MAP_CAPACITY, "Capacity (max_entries) of a retinad kernel map.", labels=["map"]
    )
    for name, n, cap in maps:
        entries.add_metric([name], n)
        capacity.add_metric([name], cap)
    return [entries, capacity]


def series_dropped(maps: Iterable[tuple[str, int]]) -> Metric:
    """retinad_series_dropped_total{map}: endpoint label sets refused by the series cap."""
    fam = CounterMetricFamily(
        SERIES_DROPPED,
        "Endpoint label sets counted under the overflow endpoint because "
        "[resolvers].max_endpoint_series was reached.",
        labels=["map"],
    )
    for name, n in maps:
        fam.add_metric([name], n)
    return fam
