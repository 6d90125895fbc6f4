"""Prometheus recording and alert rules, and the promtool unit tests for every alert.

Each alert comes with two test inputs: one it must fire on (after its ``for``, with
exactly these labels and annotations) and one it must stay silent on, the nearest healthy
case (a full map at 89%, a drop rate just under the threshold). ``promtool test rules``
runs them; tests/monitoring/test_rules.py drives promtool.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from retinad.exporter.naming import Naming

from .names import RETINA_APISERVER_HANDSHAKE, RETINA_APISERVER_NO_RESPONSE, fill
from .queries import EP_BYTES_RULE, EP_FLAGS_RULE, EP_PKTS_RULE, local_rate

Json = dict[str, Any]

DROP_RATE_THRESHOLD = 100
"""Dropped packets/s per reason on one host that pages (edit to taste)."""
LATENCY_THRESHOLD_SECONDS = 0.5
NO_RESPONSE_THRESHOLD = 0.05
"""Unanswered handshakes or requests per second to one target."""


def recording(naming: Naming) -> list[tuple[str, str]]:
    """(record, expr) pairs. The per-endpoint ones read either shape of retina naming's
    forward and flag series (``local_rate``), so the dashboards built on them work with
    remote context on or off."""
    ep = "instance, namespace, <NAME>, direction"
    return [
        (EP_BYTES_RULE, local_rate("<EP_BYTES>", "1m", ep, naming)),
        (EP_PKTS_RULE, local_rate("<EP_PKTS>", "1m", ep, naming)),
        (
            EP_FLAGS_RULE,
            local_rate("<EP_FLAGS>", "1m", "instance, namespace, <NAME>, flag, direction", naming),
        ),
        (
            "instance_reason:<BASE_DROP_PKTS>:rate5m",
            "sum by (instance, reason) (rate(<DROP_PKTS>[5m]))",
        ),
    ]


@dataclass
class Alert:
    name: str
    expr: str
    for_: str
    severity: str
    summary: str
    description: str
    runbook: str
    fire: list[tuple[str, str]]
    """Input series (promtool notation) on which the alert fires."""
    fire_labels: dict[str, str]
    """The firing alert's labels, besides alertname and severity."""
    quiet: list[tuple[str, str]]
    """The nearest healthy input, on which it must not fire."""
    eval_time: str = "20m"
    extra: dict[str, str] = field(default_factory=dict)
    retina_or: str = ""
    """Retina naming only: a second condition, ``or``-ed to ``expr``, for series that
    naming gives other names and labels (latency target apiserver, issue 14)."""
    retina_fire: list[tuple[str, str]] = field(default_factory=list)
    """Retina naming only: input on which ``retina_or`` fires (same labels, annotations)."""
    retina_quiet: list[tuple[str, str]] = field(default_factory=list)


H = 'instance="node1:10095", job="retinad"'
"""Labels every test series carries."""
HL = {"instance": "node1:10095", "job": "retinad"}

ALERTS = [
    Alert(
        "RetinadDown",
        'up{job="retinad"} == 0',
        "5m",
        "critical",
        "retinad on {{ $labels.instance }} is down",
        "Prometheus cannot scrape retinad on {{ $labels.instance }}: no network metrics from "
        "this host.",
        "systemctl status retinad; journalctl -u retinad (a start failure names what is "
        "missing; retinad check lists it); check the listen address and firewall.",
        [(f"up{{{H}}}", "1 1 0x20")],
        HL,
        [(f"up{{{H}}}", "1x22")],
    ),
    Alert(
        "RetinadCollectorFailing",
        "retinad_scrape_collector_success == 0",
        "5m",
        "warning",
        "retinad collector {{ $labels.collector }} failing on {{ $labels.instance }}",
        "The {{ $labels.collector }} collector's scrapes fail: its series are missing.",
        "journalctl -u retinad for the collector's error; retinad check for a kernel "
        "feature that went away; a restart reloads the eBPF programs.",
        [(f'retinad_scrape_collector_success{{{H}, collector="dropreason"}}', "1 0x20")],
        {**HL, "collector": "dropreason"},
        [(f'retinad_scrape_collector_success{{{H}, collector="dropreason"}}', "1x4 0x3 1x14")],
    ),
    Alert(
        "RetinadResolverDown",
        "retinad_resolver_up == 0",
        "10m",
        "warning",
        "retinad resolver {{ $labels.resolver }} out of sync on {{ $labels.instance }}",
        "The {{ $labels.resolver }} resolver has lost its source: new endpoints are "
        "counted as unknown until it reconnects.",
        "Check the resolver's source (dockerd, containerd, the Kubernetes API and its "
        "credentials) and retinad's log for the reconnect error.",
        [(f'retinad_resolver_up{{{H}, resolver="kubernetes"}}', "0x20")],
        {**HL, "resolver": "kubernetes"},
        [(f'retinad_resolver_up{{{H}, resolver="kubernetes"}}', "0x5 1x15")],
    ),
    Alert(
        "RetinadMapNearFull",
        "retinad_map_entries / retinad_map_capacity > 0.9",
        "15m",
        "warning",
        "retinad map {{ $labels.map }} over 90% full on {{ $labels.instance }}",
        "When {{ $labels.map }} is full, new flows are counted in its overflow entry "
        "without their endpoint.",
        "Raise the map's size ([packetparser] max_endpoints / max_remote_flows, "
        "[dropreason] max_entries) or lower cardinality (remote_context = false).",
        [
            (f'retinad_map_entries{{{H}, map="packetparser_endpoint"}}', "950x20"),
            (f'retinad_map_capacity{{{H}, map="packetparser_endpoint"}}', "1000x20"),
        ],
        {**HL, "map": "packetparser_endpoint"},
        [
            (f'retinad_map_entries{{{H}, map="packetparser_endpoint"}}', "890x20"),
            (f'retinad_map_capacity{{{H}, map="packetparser_endpoint"}}', "1000x20"),
        ],
    ),
    Alert(
        "RetinadMapOverflowing",
        "rate(retinad_map_overflow_packets_total[5m]) > 0",
        "5m",
        "warning",
        "retinad map {{ $labels.map }} is full on {{ $labels.instance }}",
        "Packets are being counted in {{ $labels.map }}'s overflow entry: per-endpoint "
        "series undercount.",
        "As RetinadMapNearFull: raise the map's size or lower cardinality.",
        [(f'retinad_map_overflow_packets_total{{{H}, map="packetparser_endpoint"}}', "0+10x20")],
        {**HL, "map": "packetparser_endpoint"},
        [
            (
                f'retinad_map_overflow_packets_total{{{H}, map="packetparser_endpoint"}}',
                "0+10x5 50x15",
            )
        ],
    ),
    Alert(
        "RetinadSeriesCapReached",
        "rate(retinad_series_dropped_total[5m]) > 0",
        "5m",
        "warning",
        "retinad series cap reached on {{ $labels.instance }}",
        "Endpoint label sets in {{ $labels.map }} are refused by [resolvers] "
        "max_endpoint_series and counted as name=overflow.",
        "Raise [resolvers] max_endpoint_series if the endpoints are real, or find what "
        "churns names (short-lived containers, ip_label = true).",
        [(f'retinad_series_dropped_total{{{H}, map="packetparser_endpoint"}}', "0+3x20")],
        {**HL, "map": "packetparser_endpoint"},
        [(f'retinad_series_dropped_total{{{H}, map="packetparser_endpoint"}}', "7x20")],
    ),
    Alert(
        "RetinadEventsLost",
        "sum by (instance, stage) (rate(retinad_events_lost_total[5m])) > 0",
        "10m",
        "warning",
        "retinad loses flow events on {{ $labels.instance }}",
        "Flow events are lost at stage {{ $labels.stage }}: the flow log has gaps (the "
        "counters are unaffected).",
        "Raise [packetparser.events] data_sampling_rate, or use aggregation_level = high.",
        [(f'retinad_events_lost_total{{{H}, stage="kernel"}}', "0+100x20")],
        {"instance": "node1:10095", "stage": "kernel"},
        [(f'retinad_events_lost_total{{{H}, stage="kernel"}}', "0+100x3 300x17")],
    ),
    Alert(
        "RetinadHighDropRate",
        f"instance_reason:<BASE_DROP_PKTS>:rate5m > {DROP_RATE_THRESHOLD}",
        "10m",
        "warning",
        "{{ $labels.instance }} drops packets: {{ $labels.reason }}",
        f"Over {DROP_RATE_THRESHOLD} packets/s dropped for reason {{{{ $labels.reason }}}} "
        "for 10 minutes.",
        "The reason is the kernel's: NETFILTER_DROP is a firewall rule (iptables -L -v -n, "
        "nft list ruleset), NO_SOCKET nothing listening, SOCKET_RCVBUFF a slow reader. The "
        "endpoint dashboard shows who.",
        [(f'<DROP_PKTS>{{{H}, reason="NETFILTER_DROP", direction="ingress"}}', "0+6060x30")],
        {"instance": "node1:10095", "reason": "NETFILTER_DROP"},
        [(f'<DROP_PKTS>{{{H}, reason="NETFILTER_DROP", direction="ingress"}}', "0+5940x30")],
        eval_time="25m",
    ),
    Alert(
        "RetinadTargetLatencyHigh",
        f"histogram_quantile(0.99, sum by (instance, target, le) "
        f"(rate(retinad_handshake_latency_seconds_bucket[5m]))) > {LATENCY_THRESHOLD_SECONDS}",
        "10m",
        "warning",
        "Slow TCP handshakes from {{ $labels.instance }} to {{ $labels.target }}",
        f"p99 TCP handshake latency to {{{{ $labels.target }}}} is over "
        f"{LATENCY_THRESHOLD_SECONDS}s.",
        "Check the target's load and the path to it; the node dashboard's latency heatmap "
        "shows whether all handshakes slowed or a tail grew.",
        [
            (f'retinad_handshake_latency_seconds_bucket{{{H}, target="api", le="0.1"}}', "0x20"),
            (f'retinad_handshake_latency_seconds_bucket{{{H}, target="api", le="1"}}', "0+60x20"),
            (
                f'retinad_handshake_latency_seconds_bucket{{{H}, target="api", le="+Inf"}}',
                "0+60x20",
            ),
        ],
        {"instance": "node1:10095", "target": "api"},
        [
            (f'retinad_handshake_latency_seconds_bucket{{{H}, target="api", le="0.1"}}', "0+60x20"),
            (f'retinad_handshake_latency_seconds_bucket{{{H}, target="api", le="1"}}', "0+60x20"),
            (
                f'retinad_handshake_latency_seconds_bucket{{{H}, target="api", le="+Inf"}}',
                "0+60x20",
            ),
        ],
        retina_or=(
            "histogram_quantile(0.99, sum by (instance, target, le) (label_replace(rate("
            f'{RETINA_APISERVER_HANDSHAKE}_bucket[5m]), "target", "apiserver", "", ""))) '
            f"/ 1000 > {LATENCY_THRESHOLD_SECONDS}"
        ),
        retina_fire=[
            (f'{RETINA_APISERVER_HANDSHAKE}_bucket{{{H}, le="100"}}', "0x20"),
            (f'{RETINA_APISERVER_HANDSHAKE}_bucket{{{H}, le="1000"}}', "0+60x20"),
            (f'{RETINA_APISERVER_HANDSHAKE}_bucket{{{H}, le="+Inf"}}', "0+60x20"),
        ],
        retina_quiet=[
            (f'{RETINA_APISERVER_HANDSHAKE}_bucket{{{H}, le="100"}}', "0+60x20"),
            (f'{RETINA_APISERVER_HANDSHAKE}_bucket{{{H}, le="1000"}}', "0+60x20"),
            (f'{RETINA_APISERVER_HANDSHAKE}_bucket{{{H}, le="+Inf"}}', "0+60x20"),
        ],
    ),
    Alert(
        "RetinadTargetNoResponse",
        "sum by (instance, target) (rate(retinad_no_response_total[5m])) "
        f"> {NO_RESPONSE_THRESHOLD}",
        "10m",
        "warning",
        "{{ $labels.target }} stops answering {{ $labels.instance }}",
        "Handshakes or requests from {{ $labels.instance }} to {{ $labels.target }} go "
        "unanswered, more than 3 a minute.",
        "Is the target up and reachable from this host (a firewall dropping SYNs shows in "
        "the drops panels)?",
        [(f'retinad_no_response_total{{{H}, target="api", stage="handshake"}}', "0+6x20")],
        {"instance": "node1:10095", "target": "api"},
        [(f'retinad_no_response_total{{{H}, target="api", stage="handshake"}}', "0+2x20")],
        retina_or=(
            "sum by (instance, target) (label_replace(rate("
            f'{RETINA_APISERVER_NO_RESPONSE}[5m]), "target", "apiserver", "", "")) '
            f"> {NO_RESPONSE_THRESHOLD}"
        ),
        retina_fire=[(f'{RETINA_APISERVER_NO_RESPONSE}{{{H}, no_response="handshake"}}', "0+6x20")],
        retina_quiet=[
            (f'{RETINA_APISERVER_NO_RESPONSE}{{{H}, no_response="handshake"}}', "0+2x20")
        ],
    ),
]


def _render(template: str, labels: dict[str, str]) -> str:
    """The annotation promtool should produce: only ``{{ $labels.x }}`` is used."""
    return re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels[m.group(1)], template)


def rule_file(naming: Naming) -> Json:
    rules = [{"record": fill(r, naming), "expr": fill(e, naming)} for r, e in recording(naming)]
    alerts = [
        {
            "alert": a.name,
            "expr": fill(a.expr, naming)
            + (f" or {a.retina_or}" if naming == "retina" and a.retina_or else ""),
            "for": a.for_,
            "labels": {"severity": a.severity},
            "annotations": {
                "summary": a.summary,
                "description": a.description,
                "runbook": a.runbook,
            },
        }
        for a in ALERTS
    ]
    return {
        "groups": [
            {"name": "retinad.recording", "rules": rules},
            {"name": "retinad.alerts", "rules": alerts},
        ]
    }


def test_file(naming: Naming, rule_file_name: str) -> Json:
    """promtool unit tests: per alert, one input it fires on and one it must not."""
    tests = []
    for a in ALERTS:
        labels = {"alertname": a.name, "severity": a.severity, **a.fire_labels}
        annotations = {
            "summary": _render(a.summary, labels),
            "description": _render(a.description, labels),
            "runbook": a.runbook,
        }
        fired = [{"exp_labels": labels, "exp_annotations": annotations}]
        cases = [("fires", a.fire, fired), ("silent", a.quiet, [])]
        if naming == "retina" and a.retina_or:
            retina_labels = {**labels, "target": "apiserver"}
            retina_fired = [
                {
                    "exp_labels": retina_labels,
                    "exp_annotations": {
                        "summary": _render(a.summary, retina_labels),
                        "description": _render(a.description, retina_labels),
                        "runbook": a.runbook,
                    },
                }
            ]
            cases += [
                ("fires (apiserver, Retina's names)", a.retina_fire, retina_fired),
                ("silent (apiserver, Retina's names)", a.retina_quiet, []),
            ]
        for case, series, expected in cases:
            tests.append(
                {
                    "name": f"{a.name} {case}",
                    "interval": "1m",
                    "input_series": [{"series": fill(s, naming), "values": v} for s, v in series],
                    "alert_rule_test": [
                        {"eval_time": a.eval_time, "alertname": a.name, "exp_alerts": expected}
                    ],
                }
            )
    return {"rule_files": [rule_file_name], "evaluation_interval": "1m", "tests": tests}
