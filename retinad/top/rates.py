"""Rates from two snapshots of a retinad's counters, grouped as ``retinad top`` shows them.

A rate is (now - before) / seconds between the scrapes; a counter that went down was reset
(a restart), so its whole value is the increase, as Prometheus's rate() treats it. A series
that was not in the first scrape has no rate yet: it shows up from the next refresh.
Works with either naming: the names come from retinad.exporter.naming.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from retinad.exporter import naming as n
from retinad.exporter.naming import MetricSpec, Naming
from retinad.top.scrape import Labels, Snapshot

HANDSHAKE = "retinad_handshake_latency_seconds"
REQUEST = "retinad_request_latency_seconds"
NO_RESPONSE = "retinad_no_response_total"


@dataclass
class EndpointRow:
    namespace: str
    name: str
    kind: str
    bytes_in: float = 0.0
    bytes_out: float = 0.0
    packets_in: float = 0.0
    packets_out: float = 0.0
    drops: float = 0.0

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}" if self.namespace else self.name


@dataclass
class DropRow:
    reason: str
    direction: str
    endpoint: str
    packets: float
    bytes: float


@dataclass
class LatencyRow:
    target: str
    handshake_p50: float = math.nan
    handshake_p99: float = math.nan
    request_p50: float = math.nan
    request_p99: float = math.nan
    no_response: float = 0.0


@dataclass
class Report:
    naming: Naming
    seconds: float
    bytes_in: float = 0.0
    bytes_out: float = 0.0
    packets_in: float = 0.0
    packets_out: float = 0.0
    drops: float = 0.0
    collectors: dict[str, bool] = field(default_factory=dict)
    endpoints: list[EndpointRow] = field(default_factory=list)
    drop_rows: list[DropRow] = field(default_factory=list)
    latency: list[LatencyRow] = field(default_factory=list)


def detect_naming(snap: Snapshot) -> Naming:
    """Retina naming's network metrics all start with Retina's prefix."""
    prefix = n.FORWARD_PACKETS.retina.split("_", 1)[0] + "_"  # "networkobservability_"
    return "retina" if any(name.startswith(prefix) for name in snap.names()) else "prometheus"


def exposed(spec: MetricSpec, naming: Naming) -> str:
    return spec.prometheus + "_total" if naming == "prometheus" else spec.retina


def rates(before: Snapshot, now: Snapshot, name: str) -> dict[Labels, float]:
    """Per-second increase of every series of ``name`` present in both snapshots."""
    seconds = now.at - before.at
    if seconds <= 0:
        return {}
    old = before.get(name)
    out = {}
    for labels, value in now.get(name).items():
        if labels in old:
            prev = old[labels]
            out[labels] = (value - prev if value >= prev else value) / seconds
    return out


def increases(before: Snapshot, now: Snapshot, name: str) -> dict[Labels, float]:
    seconds = now.at - before.at
    return {k: v * seconds for k, v in rates(before, now, name).items()}


def quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float:
    """histogram_quantile over (upper bound, cumulative increase) pairs, as Prometheus
    computes it: linear within the bucket, the last finite bound for the +Inf bucket."""
    ordered = sorted(buckets)
    if not ordered or ordered[-1][0] != math.inf or ordered[-1][1] <= 0:
        return math.nan
    rank = q * ordered[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in ordered:
        if count >= rank:
            if bound == math.inf:
                return lower_bound
            width = count - lower_count
            return (
                bound
                if width <= 0
                else lower_bound + (bound - lower_bound) * (rank - lower_count) / width
            )
        lower_bound, lower_count = bound, count
    return math.nan


def build_report(before: Snapshot, now: Snapshot) -> Report:
    naming = detect_naming(now)
    ep_labels = n.ENDPOINT_LABELS[naming]
    report = Report(naming, now.at - before.at)

    def endpoint(labels: Labels) -> tuple[str, str, str]:
        d = dict(labels)
        if "source_podname" in d:  # Retina's remote-context shape: the local endpoint is
            # the source of what it sends and the destination of what it receives
            side = "destination_" if d.get("direction") == "ingress" else "source_"
            return d[side + "namespace"], d[side + "podname"], d[side + "workload_kind"]
        return d.get(ep_labels[0], ""), d.get(ep_labels[1], ""), d.get(ep_labels[2], "")

    for labels, value in now.get(n.SCRAPE_SUCCESS).items():
        report.collectors[dict(labels).get("collector", "")] = value == 1
    for spec, attr in ((n.FORWARD_BYTES, "bytes"), (n.FORWARD_PACKETS, "packets")):
        for labels, r in rates(before, now, exposed(spec, naming)).items():
            side = "in" if dict(labels).get("direction") == "ingress" else "out"
            setattr(report, f"{attr}_{side}", getattr(report, f"{attr}_{side}") + r)
    report.drops = sum(rates(before, now, exposed(n.DROP_PACKETS, naming)).values())

    rows: dict[tuple[str, str, str], EndpointRow] = {}

    def row(key: tuple[str, str, str]) -> EndpointRow:
        return rows.setdefault(key, EndpointRow(*key))

    for spec, attr in (
        (n.ENDPOINT_FORWARD_BYTES, "bytes"),
        (n.ENDPOINT_FORWARD_PACKETS, "packets"),
    ):
        for labels, r in rates(before, now, exposed(spec, naming)).items():
            side = "in" if dict(labels).get("direction") == "ingress" else "out"
            target = row(endpoint(labels))
            setattr(target, f"{attr}_{side}", getattr(target, f"{attr}_{side}") + r)
    ep_drop_bytes = rates(before, now, exposed(n.ENDPOINT_DROP_BYTES, naming))
    for labels, r in rates(before, now, exposed(n.ENDPOINT_DROP_PACKETS, naming)).items():
        target = row(endpoint(labels))
        target.drops += r
        d = dict(labels)
        report.drop_rows.append(
            DropRow(
                d.get("reason", ""),
                d.get("direction", ""),
                target.key,
                r,
                ep_drop_bytes.get(labels, 0.0),
            )
        )
    if not report.drop_rows:  # basic mode: node-level drops only
        node_bytes = rates(before, now, exposed(n.DROP_BYTES, naming))
        for labels, r in rates(before, now, exposed(n.DROP_PACKETS, naming)).items():
            d = dict(labels)
            report.drop_rows.append(
                DropRow(
                    d.get("reason", ""), d.get("direction", ""), "-", r, node_bytes.get(labels, 0.0)
                )
            )
    report.endpoints = [r for r in rows.values() if r.name != "overflow" or _busy(r)]
    report.latency = _latency(before, now)
    return report


def _busy(r: EndpointRow) -> bool:
    return any((r.bytes_in, r.bytes_out, r.packets_in, r.packets_out, r.drops))


def _latency(before: Snapshot, now: Snapshot) -> list[LatencyRow]:
    rows: dict[str, LatencyRow] = {}
    for metric, attr in ((HANDSHAKE, "handshake"), (REQUEST, "request")):
        per_target: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for labels, inc in increases(before, now, f"{metric}_bucket").items():
            d = dict(labels)
            per_target[d.get("target", "")].append((float(d.get("le", "+Inf")), inc))
        for target, buckets in per_target.items():
            r = rows.setdefault(target, LatencyRow(target))
            setattr(r, f"{attr}_p50", quantile(0.5, buckets))
            setattr(r, f"{attr}_p99", quantile(0.99, buckets))
    for labels, rate in rates(before, now, NO_RESPONSE).items():
        target = dict(labels).get("target", "")
        rows.setdefault(target, LatencyRow(target)).no_response += rate
    return sorted(rows.values(), key=lambda r: r.target)


SORT_KEYS = (
    "bytes",
    "bytes_in",
    "bytes_out",
    "packets",
    "packets_in",
    "packets_out",
    "drops",
    "name",
)


def sort_endpoints(rows: list[EndpointRow], key: str) -> list[EndpointRow]:
    """Largest first; ``name`` sorts alphabetically."""
    if key == "name":
        return sorted(rows, key=lambda r: r.key)
    if key in ("bytes", "packets"):
        return sorted(rows, key=lambda r: -(getattr(r, f"{key}_in") + getattr(r, f"{key}_out")))
    return sorted(rows, key=lambda r: -float(getattr(r, key)))


def matches(text: str, needle: str) -> bool:
    return needle.casefold() in text.casefold()
