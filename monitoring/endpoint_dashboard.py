"""The endpoint dashboard: one container or pod, its traffic, drops and peers."""

from __future__ import annotations

from retinad.exporter.naming import Naming

from .grafana import Panel, Row, Target
from .queries import EP, EP_BYTES_RULE, EP_FLAGS_RULE, EP_PKTS_RULE, rate_by, rst_per_syn


def _per_endpoint(metric: str, rule: str, by: str, naming: Naming) -> str:
    """The endpoint's rate of ``metric`` by ``by``: straight from the series in prometheus
    naming; in retina naming from the recording rule, which reads both of that naming's
    series shapes (remote context off: per endpoint; on: Retina's source/destination)."""
    if naming == "prometheus":
        return rate_by(metric, EP, by)
    return f"sum by ({by}) ({rule}{{{EP}}})"


def _rst_per_syn(naming: Naming) -> str:
    if naming == "prometheus":
        return rst_per_syn("<EP_FLAGS>", EP, "direction")
    rst, syn = (f'sum by (direction) ({EP_FLAGS_RULE}{{{EP}, flag="{f}"}})' for f in ("RST", "SYN"))
    return f"{rst} / {syn}"


def endpoint_rows(naming: Naming) -> list[Row]:
    """Traffic, drops and (prometheus naming) peers of one endpoint.

    In retina naming the traffic panels read the recording rules, so they work with remote
    context on or off; the peers row is left out, as with remote context on Retina's own
    pod-level dashboard shows peers in Retina's labels
    (tests/monitoring/test_retina_dashboards.py evaluates both).
    """
    traffic = Row(
        "Traffic",
        [
            Panel(
                "Bytes/s in and out",
                "TCP and UDP bytes to (ingress) and from (egress) this endpoint.",
                [
                    Target(
                        _per_endpoint("<EP_BYTES>", EP_BYTES_RULE, "direction", naming),
                        "{{direction}}",
                    )
                ],
                unit="Bps",
            ),
            Panel(
                "Packets/s in and out",
                "TCP and UDP packets to and from this endpoint.",
                [
                    Target(
                        _per_endpoint("<EP_PKTS>", EP_PKTS_RULE, "direction", naming),
                        "{{direction}}",
                    )
                ],
                unit="pps",
            ),
            Panel(
                "TCP flags/s",
                "Packets to and from this endpoint carrying each flag.",
                [
                    Target(
                        _per_endpoint("<EP_FLAGS>", EP_FLAGS_RULE, "flag, direction", naming),
                        "{{flag}} {{direction}}",
                    )
                ],
                unit="pps",
            ),
            Panel(
                "RST per SYN",
                "Resets per connection attempt for this endpoint.",
                [Target(_rst_per_syn(naming), "{{direction}}")],
                unit="percentunit",
            ),
        ],
    )
    drops = Row(
        "Drops",
        [
            Panel(
                "Dropped packets/s by reason",
                "Packets to or from this endpoint the kernel dropped, and why.",
                [
                    Target(
                        rate_by("<EP_DROP_PKTS>", EP, "reason, direction"),
                        "{{reason}} {{direction}}",
                    )
                ],
                unit="pps",
            ),
            Panel(
                "Dropped bytes/s by reason",
                "Their bytes.",
                [
                    Target(
                        rate_by("<EP_DROP_BYTES>", EP, "reason, direction"),
                        "{{reason}} {{direction}}",
                    )
                ],
                unit="Bps",
            ),
        ],
    )
    peers = Row(
        "Peers (remote context)",
        [
            Panel(
                f"Top peers by {what}/s",
                f"Who this endpoint talks to, by {what}/s; needs [packetparser] "
                "remote_context = true.",
                [
                    Target(
                        f"topk(10, {rate_by(metric, EP, '<RNS>, <RNAME>, <RKIND>, direction')})",
                        "{{<RNS>}}/{{<RNAME>}} {{direction}}",
                    )
                ],
                unit=unit,
            )
            for what, metric, unit in (
                ("bytes", "<RM_BYTES>", "Bps"),
                ("packets", "<RM_PKTS>", "pps"),
            )
        ],
    )
    return [traffic, drops, peers] if naming == "prometheus" else [traffic, drops]
