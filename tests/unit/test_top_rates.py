"""retinad top's arithmetic on two literal scrapes: rates, resets, new series, quantiles,
grouping per endpoint, in both namings (pure functions, so literal input is the real input)."""

from __future__ import annotations

import math

import pytest

from retinad.top.rates import build_report, quantile, sort_endpoints
from retinad.top.scrape import parse

DROPS = "retinad_endpoint_drop_packets_total"
EP = 'namespace="shop",name="{n}",workload_kind="Deployment",workload_name="{n}"'

BEFORE = f"""
retinad_forward_bytes_total{{direction="ingress"}} 1000
retinad_forward_bytes_total{{direction="egress"}} 500
retinad_endpoint_forward_bytes_total{{direction="ingress",{EP.format(n="web")}}} 1000
retinad_endpoint_forward_bytes_total{{direction="egress",{EP.format(n="web")}}} 500
retinad_endpoint_forward_packets_total{{direction="ingress",{EP.format(n="web")}}} 10
{DROPS}{{reason="NO_SOCKET",direction="ingress",{EP.format(n="db")}}} 900
retinad_scrape_collector_success{{collector="packetparser"}} 1
retinad_handshake_latency_seconds_bucket{{target="api",le="0.01"}} 0
retinad_handshake_latency_seconds_bucket{{target="api",le="0.1"}} 0
retinad_handshake_latency_seconds_bucket{{target="api",le="+Inf"}} 0
retinad_no_response_total{{target="api",stage="handshake"}} 2
"""
AFTER = f"""
retinad_forward_bytes_total{{direction="ingress"}} 3000
retinad_forward_bytes_total{{direction="egress"}} 900
retinad_endpoint_forward_bytes_total{{direction="ingress",{EP.format(n="web")}}} 3000
retinad_endpoint_forward_bytes_total{{direction="egress",{EP.format(n="web")}}} 900
retinad_endpoint_forward_packets_total{{direction="ingress",{EP.format(n="web")}}} 30
retinad_endpoint_forward_bytes_total{{direction="ingress",{EP.format(n="new")}}} 7777
{DROPS}{{reason="NO_SOCKET",direction="ingress",{EP.format(n="db")}}} 40
retinad_scrape_collector_success{{collector="packetparser"}} 0
retinad_handshake_latency_seconds_bucket{{target="api",le="0.01"}} 50
retinad_handshake_latency_seconds_bucket{{target="api",le="0.1"}} 100
retinad_handshake_latency_seconds_bucket{{target="api",le="+Inf"}} 100
retinad_no_response_total{{target="api",stage="handshake"}} 12
"""


def test_rates_over_two_scrapes() -> None:
    r = build_report(parse(BEFORE, 10.0), parse(AFTER, 12.0))
    assert (r.naming, r.seconds, r.bytes_in, r.bytes_out) == ("prometheus", 2.0, 1000.0, 200.0)
    assert r.collectors == {"packetparser": False}
    rows = {row.key: row for row in r.endpoints}
    # "new" was not in the first scrape: no rate yet. db's counter went down (a restart),
    # so its whole value (40) is the increase, as rate() counts a reset.
    assert sorted(rows) == ["shop/db", "shop/web"]
    web, db = rows["shop/web"], rows["shop/db"]
    assert (web.bytes_in, web.bytes_out, web.packets_in, web.drops) == (1000.0, 200.0, 10.0, 0.0)
    assert (db.drops, db.kind) == (20.0, "Deployment")
    assert [(d.reason, d.endpoint, d.packets) for d in r.drop_rows] == [
        ("NO_SOCKET", "shop/db", 20.0)
    ]
    (api,) = r.latency
    # 50 of 100 handshakes under 10 ms: p50 is the 10 ms bound; p99 interpolates in 10-100 ms.
    assert api.target == "api" and api.handshake_p50 == pytest.approx(0.01)
    assert api.handshake_p99 == pytest.approx(0.01 + 0.09 * 49 / 50)
    assert math.isnan(api.request_p50) and api.no_response == 5.0
    assert [e.key for e in sort_endpoints(r.endpoints, "bytes")] == ["shop/web", "shop/db"]
    assert [e.key for e in sort_endpoints(r.endpoints, "drops")] == ["shop/db", "shop/web"]


def test_retina_naming_is_read_with_retinas_names_and_labels() -> None:
    before = 'networkobservability_adv_forward_bytes{direction="egress",namespace="shop",podname="web",workload_kind="Pod",workload_name="web"} 100\n'  # noqa: E501
    after = before.replace(" 100\n", " 400\n")
    r = build_report(parse(before, 0.0), parse(after, 3.0))
    assert r.naming == "retina"
    assert [(e.key, e.bytes_out) for e in r.endpoints] == [("shop/web", 100.0)]


def test_retina_remote_context_rows_are_the_local_side() -> None:
    """Retina's remote-context shape: the local endpoint is the source of egress series and
    the destination of ingress ones; two peers of one pod add up in its row."""
    side = 'namespace="shop",{s}podname="{p}",{s}workload_kind="Pod",{s}workload_name="{p}"'

    def pair(direction: str, src: str, dst: str, value: int) -> str:
        s = side.format(s="source_", p=src).replace("namespace", "source_namespace", 1)
        d = side.format(s="destination_", p=dst).replace("namespace", "destination_namespace", 1)
        return (
            f'networkobservability_adv_forward_bytes{{direction="{direction}",{s},{d}}} {value}\n'
        )

    before = pair("egress", "web", "db", 0) + pair("egress", "web", "cache", 0)
    before += pair("ingress", "db", "web", 0)
    after = pair("egress", "web", "db", 30) + pair("egress", "web", "cache", 30)
    after += pair("ingress", "db", "web", 90)
    r = build_report(parse(before, 0.0), parse(after, 3.0))
    assert r.naming == "retina"
    assert [(e.key, e.kind, e.bytes_in, e.bytes_out) for e in r.endpoints] == [
        ("shop/web", "Pod", 30.0, 20.0)
    ]


def test_quantile_matches_prometheus_histogram_quantile() -> None:
    buckets = [(0.1, 10.0), (0.5, 30.0), (math.inf, 40.0)]
    assert quantile(0.5, buckets) == pytest.approx(0.1 + 0.4 * (20 - 10) / 20)
    assert quantile(0.99, buckets) == 0.5  # in the +Inf bucket: the last finite bound
    assert math.isnan(quantile(0.5, [(0.1, 0.0), (math.inf, 0.0)]))
