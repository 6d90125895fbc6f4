"""The endpoint dashboard: one container or pod, its traffic, drops and peers."""

from __future__ import annotations

from retinad.exporter.naming import Naming

from .grafana import Panel, Row, Target
from .queries import EP, rate_by, rst_per_syn


def endpoint_rows(naming: Naming) -> list[Row]:
    """Traffic, drops and (prometheus naming) peers of one endpoint.

    In retina naming remote context gives the forward series Retina's source/destination
    shape instead of per-endpoint ones, so these panels read retina naming without remote
    context, and the peers row is left out: with remote context on, Retina's own pod-level
    dashboard is the one that applies (tests/monitoring/test_retina_dashboards.py).
    """
    traffic = Row(
        "Traffic",
        [
            Panel(
                "Bytes/s in and out",
                "TCP and UDP bytes to (ingress) and from (egress) this endpoint.",
                [Target(rate_by("<EP_BYTES>", EP, "direction"), "{{direction}}")],
                unit="Bps",
            ),
            Panel(
                "Packets/s in and out",
                "TCP and UDP packets to and from this endpoint.",
                [Target(rate_by("<EP_PKTS>", EP, "direction"), "{{direction}}")],
                unit="pps",
            ),
            Panel(
                "TCP flags/s",
                "Packets to and from this endpoint carrying each flag.",
                [Target(rate_by("<EP_FLAGS>", EP, "flag, direction"), "{{flag}} {{direction}}")],
                unit="pps",
            ),
            Panel(
                "RST per SYN",
                "Resets per connection attempt for this endpoint.",
                [Target(rst_per_syn("<EP_FLAGS>", EP, "direction"), "{{direction}}")],
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
