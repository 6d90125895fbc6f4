"""The node dashboard: what this host's network is doing, and whether retinad is healthy."""

from __future__ import annotations

from retinad.exporter.naming import Naming

from .grafana import Panel, Row, Target
from .names import (
    RETINA_APISERVER_HANDSHAKE,
    RETINA_APISERVER_NO_RESPONSE,
    RETINA_APISERVER_REQUEST,
)
from .queries import RATE, I, rate_by, rst_per_syn


def _apiserver_quantiles(naming: Naming) -> list[Target]:
    """Retina naming: target apiserver's quantiles, from Retina's names (ms -> s)."""
    if naming != "retina":
        return []
    return [
        Target(
            f"histogram_quantile({q}, sum by (instance, le) "
            f"(rate({metric}_bucket{{{I}}}{RATE}))) / 1000",
            f"apiserver {kind} p{int(q * 100)}",
        )
        for kind, metric in (
            ("handshake", RETINA_APISERVER_HANDSHAKE),
            ("request", RETINA_APISERVER_REQUEST),
        )
        for q in (0.5, 0.99)
    ]


def _apiserver_no_response(naming: Naming) -> list[Target]:
    if naming != "retina":
        return []
    expr = rate_by(RETINA_APISERVER_NO_RESPONSE, I, "instance, no_response")
    return [Target(expr, "apiserver {{no_response}}")]


def node_rows(naming: Naming) -> list[Row]:
    """Every row; in retina naming the latency panels also read target apiserver under
    Retina's names (the other targets keep retinad's in both namings)."""
    health = Row(
        "retinad health",
        [
            Panel(
                "Collectors succeeding",
                "1 when the collector's last scrape worked; 0 means its kernel map could not "
                "be read and its series are missing (alert RetinadCollectorFailing).",
                [
                    Target(
                        f"min by (instance, collector) (retinad_scrape_collector_success{{{I}}})",
                        "{{instance}} {{collector}}",
                    )
                ],
                width=8,
            ),
            Panel(
                "Collector scrape duration",
                "Time each collector takes to read its maps per scrape: grows with flows and "
                "endpoints, not packets.",
                [
                    Target(
                        f"max by (instance, collector) "
                        f"(retinad_scrape_collector_duration_seconds{{{I}}})",
                        "{{instance}} {{collector}}",
                    )
                ],
                unit="s",
                width=8,
            ),
            Panel(
                "Prometheus scrape duration",
                "Whole /metrics scrape as Prometheus saw it, against its scrape_timeout.",
                [Target(f"max by (instance) (scrape_duration_seconds{{{I}}})", "{{instance}}")],
                unit="s",
                width=8,
            ),
        ],
    )
    traffic = Row(
        "Traffic through the host",
        [
            Panel(
                "Bytes/s in and out",
                "TCP and UDP bytes (Ethernet header included) through every interface "
                "retinad is attached to; ingress is towards the endpoint.",
                [
                    Target(
                        rate_by("<FWD_BYTES>", I, "instance, direction"),
                        "{{instance}} {{direction}}",
                    )
                ],
                unit="Bps",
            ),
            Panel(
                "Packets/s in and out",
                "TCP and UDP packets through every attached interface.",
                [
                    Target(
                        rate_by("<FWD_PKTS>", I, "instance, direction"),
                        "{{instance}} {{direction}}",
                    )
                ],
                unit="pps",
            ),
            Panel(
                "Attached interfaces by role",
                "Interfaces carrying packetparser: host interfaces and container veths. A "
                "container whose veth is missing here is not counted.",
                [
                    Target(
                        "sum by (instance, role) (retinad_attached_interfaces{" + I + "})",
                        "{{instance}} {{role}}",
                    )
                ],
                width=8,
            ),
            Panel(
                "Interfaces",
                "Each attached interface with its role and attach mode (tcx or clsact).",
                [
                    Target(
                        "max by (instance, interface, ifindex, role, attach_mode) "
                        "(retinad_interface_info{" + I + "})",
                        instant=True,
                        format="table",
                    )
                ],
                kind="table",
                width=16,
            ),
        ],
    )
    endpoints = Row(
        "Top endpoints",
        [
            Panel(
                f"Top endpoints by {what}/s",
                f"The 10 endpoints with the most {what}/s (in plus out); from the recording "
                f"rule {rule}.",
                [
                    Target(
                        f"topk(10, sum by (namespace, <NAME>) ({rule}{{{I}}}))",
                        "{{namespace}}/{{<NAME>}}",
                    )
                ],
                unit=unit,
            )
            for what, rule, unit in (
                ("bytes", "instance_namespace_<NAME>_direction:<BASE_EP_BYTES>:rate1m", "Bps"),
                ("packets", "instance_namespace_<NAME>_direction:<BASE_EP_PKTS>:rate1m", "pps"),
            )
        ],
    )
    tcp = Row(
        "TCP",
        [
            Panel(
                "TCP flags/s",
                "Packets carrying each TCP flag, both directions.",
                [Target(rate_by("<TCP_FLAGS>", I, "instance, flag"), "{{instance}} {{flag}}")],
                unit="pps",
            ),
            Panel(
                "RST per SYN",
                "Resets per connection attempt: near 0 is healthy; towards 1 means most "
                "connections are refused or torn down.",
                [Target(rst_per_syn("<TCP_FLAGS>", I, "instance"), "{{instance}}")],
                unit="percentunit",
            ),
        ],
    )
    drops = Row(
        "Drops",
        [
            Panel(
                "Dropped packets/s by reason and direction",
                "Packets the kernel freed as dropped, named by its own drop reason "
                "(NETFILTER_DROP is a firewall rule, NO_SOCKET nothing listening).",
                [
                    Target(
                        rate_by("<DROP_PKTS>", I, "instance, reason, direction"),
                        "{{instance}} {{reason}} {{direction}}",
                    )
                ],
                unit="pps",
            ),
            Panel(
                "Dropped bytes/s by reason",
                "The dropped packets' IP length.",
                [Target(rate_by("<DROP_BYTES>", I, "instance, reason"), "{{instance}} {{reason}}")],
                unit="Bps",
            ),
            Panel(
                "Top endpoints by drops/s",
                "Which containers or pods lose packets, and why.",
                [
                    Target(
                        f"topk(10, {rate_by('<EP_DROP_PKTS>', I, 'namespace, <NAME>, reason')})",
                        "{{namespace}}/{{<NAME>}} {{reason}}",
                    )
                ],
                unit="pps",
                width=24,
            ),
        ],
    )
    latency = Row(
        "Latency to targets",
        [
            *(
                Panel(
                    f"{what} latency",
                    f"Distribution of {what.lower()} latency to every configured target"
                    + (
                        " but apiserver (in Retina's names and milliseconds: its quantiles "
                        "are in the next panel)."
                        if naming == "retina"
                        else "."
                    ),
                    [
                        Target(
                            f"sum by (le) (rate({metric}_bucket{{{I}}}{RATE}))",
                            "{{le}}",
                            format="heatmap",
                        )
                    ],
                    kind="heatmap",
                    unit="s",
                    width=6,
                )
                for what, metric in (
                    ("Handshake", "retinad_handshake_latency_seconds"),
                    ("Request", "retinad_request_latency_seconds"),
                )
            ),
            Panel(
                "Latency quantiles per target",
                "p50 and p99 of TCP handshake and request latency, per target.",
                [
                    Target(
                        f"histogram_quantile({q}, sum by (instance, target, le) "
                        f"(rate({metric}_bucket{{{I}}}{RATE})))",
                        f"{{{{target}}}} {kind} p{int(q * 100)}",
                    )
                    for kind, metric in (
                        ("handshake", "retinad_handshake_latency_seconds"),
                        ("request", "retinad_request_latency_seconds"),
                    )
                    for q in (0.5, 0.99)
                ]
                + _apiserver_quantiles(naming),
                unit="s",
            ),
            Panel(
                "No response/s per target",
                "Handshakes or requests to a target that got no answer, by stage.",
                [
                    Target(
                        rate_by("retinad_no_response_total", I, "instance, target, stage"),
                        "{{target}} {{stage}}",
                    ),
                    *_apiserver_no_response(naming),
                ],
                unit="ops",
                width=24,
            ),
        ],
    )
    internals = Row(
        "Maps, series and resolvers",
        [
            Panel(
                "Map fullness",
                "Entries over capacity per kernel map. At 1 new flows go to the overflow "
                "entry (counted, but without their endpoint).",
                [
                    Target(
                        f"max by (instance, map) (retinad_map_entries{{{I}}} "
                        f"/ retinad_map_capacity{{{I}}})",
                        "{{instance}} {{map}}",
                    )
                ],
                unit="percentunit",
                width=8,
            ),
            Panel(
                "Overflow packets/s",
                "Packets counted in a full map's overflow entry.",
                [
                    Target(
                        rate_by("retinad_map_overflow_packets_total", I, "instance, map"),
                        "{{instance}} {{map}}",
                    )
                ],
                unit="pps",
                width=8,
            ),
            Panel(
                "Label sets refused by the series cap",
                "Endpoint label sets counted as name=overflow because "
                "[resolvers] max_endpoint_series was reached.",
                [
                    Target(
                        rate_by("retinad_series_dropped_total", I, "instance, map"),
                        "{{instance}} {{map}}",
                    )
                ],
                unit="ops",
                width=8,
            ),
            Panel(
                "Resolvers in sync",
                "1 while the resolver's index follows its source (Docker, containerd, "
                "Kubernetes API); 0 while it reconnects and names go stale.",
                [
                    Target(
                        f"min by (instance, resolver) (retinad_resolver_up{{{I}}})",
                        "{{instance}} {{resolver}}",
                    )
                ],
                width=8,
            ),
            Panel(
                "Resolver endpoints",
                "Endpoints each resolver knows.",
                [
                    Target(
                        f"sum by (instance, resolver) (retinad_resolver_endpoints{{{I}}})",
                        "{{instance}} {{resolver}}",
                    )
                ],
                width=8,
            ),
            Panel(
                "Unparsed packets/s",
                "Packets packetparser saw but could not parse, by reason.",
                [
                    Target(
                        rate_by("retinad_packets_unparsed_total", I, "instance, reason"),
                        "{{instance}} {{reason}}",
                    )
                ],
                unit="pps",
                width=8,
            ),
            Panel(
                "Flow events/s",
                "Events delivered to user space (only with [packetparser.events] enabled).",
                [
                    Target(
                        rate_by("retinad_events_total", I, "instance, transport"),
                        "{{instance}} {{transport}}",
                    )
                ],
                unit="ops",
            ),
            Panel(
                "Flow events lost/s",
                "Events lost on the way, by stage (kernel ring full, user-space queue).",
                [
                    Target(
                        rate_by("retinad_events_lost_total", I, "instance, stage"),
                        "{{instance}} {{stage}}",
                    )
                ],
                unit="ops",
            ),
        ],
    )
    return [health, traffic, endpoints, tcp, drops, latency, internals]
