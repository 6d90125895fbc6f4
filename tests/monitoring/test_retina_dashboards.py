"""Microsoft Retina's own pod-level dashboard on a real Prometheus scraping a real retinad.

retinad runs in retina naming with remote context on, the stack's traffic flowing
(tests/monitoring/stack.py: frontend and batch on host interfaces, their peers web and db,
and ``stray``, an address no resolver names). The dashboard is Retina's file, unchanged
(tests/monitoring/retina/, from microsoft/retina deploy/grafana-dashboards/). Its
``pod`` variable is filled the way Grafana does a ``query_result()`` variable (each
series as text, the variable's regex applied), and each panel query, interpolated as
Grafana does, must return series broken down by the labels its ``sum by`` names, with
exactly the pods and addresses the stack makes. Two panels cannot work, for the reasons
in CANNOT_WORK; the test asserts the exact way each fails, so a change shows. retinad's
own retina-naming dashboards and rules are checked on the same stack as well.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from monitoring.generate import rule_file_name
from tests.daemon_proc import wait_for
from tests.monitoring.prometheus import Prometheus, interpolate, running_prometheus
from tests.monitoring.stack import Stack, running_stack
from tests.monitoring.test_dashboards_on_prometheus import check_dashboard_queries, check_rules

DASHBOARD = Path(__file__).parent / "retina" / "standard-pod-level.json"
RULES = Path(__file__).parents[2] / "monitoring" / "rules" / rule_file_name("retina")

PODS = {"frontend", "batch", "web", "db", "overflow"}
"""Every named endpoint of the stack (each sends and receives: replies, resets), and
retinad's overflow endpoint, whose series exist from the start (at 0 until a map or the
series cap is full) so that no count ever vanishes."""

CANNOT_WORK = {
    "Dropped pps per source pod": (
        "retinad's drop map keys one address per drop (the endpoint's: the destination of "
        "an inbound packet, the source of an outbound one), so adv_drop_count keeps its "
        "per-endpoint labels and has no source_podname to break down by"
    ),
    "API server latency": (
        "it queries networkobservability_node_apiserver_handshake_latency_ms_bucket, a name "
        "Retina declares (pkg/metrics/types.go) but never registers: Retina's own latency "
        "histogram is adv_node_apiserver_tcp_handshake_latency (issue 14's retina naming)"
    ),
}


@pytest.fixture(scope="module")
def retina_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("stack-retina-remote")
    with running_stack("retina", workdir, remote_context=True) as st:
        yield st


@pytest.fixture(scope="module")
def prometheus(
    retina_stack: Stack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Prometheus]:
    workdir = tmp_path_factory.mktemp("prometheus-retina-remote")
    with running_prometheus(f"127.0.0.1:{retina_stack.port}", [RULES], workdir) as prom:
        # Enough scrapes for irate over Retina's [1m] and [5m] windows to have two points.
        wait_for(
            lambda: prom.instant('count_over_time(up{job="retinad"}[10s]) >= 8'),
            timeout=90,
            what="8 scrapes of retinad",
        )
        yield prom


def query_result_options(prom: Prometheus, variable: dict[str, Any]) -> list[str]:
    """A Grafana ``query_result(expr)`` variable: each series of the instant query as
    ``name{k="v",...} value timestamp`` (Grafana's metricFindQuery), the variable's regex
    applied, the first group kept, duplicates dropped in order."""
    query = variable["query"]["query"]
    m = re.fullmatch(r"query_result\((.*)\)", query.strip())
    assert m, query
    regex = re.compile(variable["regex"].strip("/"))
    options: list[str] = []
    for series in prom.instant(m.group(1)):
        labels = dict(series["metric"])
        name = labels.pop("__name__", "")
        text = name + "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"
        text += f" {series['value'][1]} {int(float(series['value'][0]) * 1000)}"
        found = regex.match(text)
        if found and found.group(1) not in options:
            options.append(found.group(1))
    return options


def targets(dash: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for panel in dash["panels"]:
        for inner in panel.get("panels", [panel]) if panel["type"] == "row" else [panel]:
            for target in inner.get("targets", []):
                yield inner["title"], target


def breakdown(expr: str) -> list[str]:
    """The labels of the expression's ``sum by (...)``: what the panel draws one line per."""
    m = re.search(r"by\s*\(([^)]*)\)", expr)
    return [label.strip() for label in m.group(1).split(",")] if m else []


def expected_values(label: str, stray: str) -> set[str]:
    """What the stack makes the panel's breakdown label take."""
    if label.endswith("_ip"):  # the panels of peers no resolver names
        return {stray}
    return PODS


@pytest.mark.parametrize("pod", ["All", "frontend"])
def test_retinas_pod_level_dashboard_works_on_retinad(
    retina_stack: Stack, prometheus: Prometheus, pod: str
) -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] == "RetinaStandardPodTraffic"
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    options = query_result_options(prometheus, variables["pod"])
    # The regex keeps the last podname="..." of each series: source_podname (labels come
    # sorted), so every pod that sends, and "unknown" for the stray address's replies.
    failures = []
    if sorted(options) != sorted(PODS | {"unknown"}):
        failures.append(f"variable pod offers {sorted(options)}")
    # Grafana's "All" without an allValue is every option, regex-escaped and joined.
    chosen = {"pod": options if pod == "All" else pod}

    checked, cannot = 0, set()
    for title, target in targets(dash):
        expr = interpolate(target["expr"], variables, chosen)
        result = prometheus.range(expr, 15)
        checked += 1
        if title in CANNOT_WORK:
            cannot.add(title)
            by = breakdown(expr)
            if any(label in s["metric"] for s in result for label in by):
                failures.append(f"{title!r} now has {by}: move it out of CANNOT_WORK")
            continue
        if not result:
            failures.append(f"{title!r} {target['refId']}: empty: {expr}")
            continue
        for label in breakdown(expr):
            got = {s["metric"].get(label, "") for s in result}
            want = expected_values(label, retina_stack.stray_ip)
            if got != want:
                failures.append(f"{title!r}: {label} is {sorted(got)}, want {sorted(want)}")
        if not breakdown(expr):  # Outgoing/Incoming Traffic: one sum of the chosen pods
            values = [float(v) for s in result for _, v in s["values"]]
            if not max(values) > 0:
                failures.append(f"{title!r}: never above 0: {expr}")
    assert failures == []
    assert cannot == set(CANNOT_WORK)
    assert checked == 11  # every target of Retina's dashboard


def test_retinads_own_retina_naming_dashboards_work_with_remote_context(
    retina_stack: Stack, prometheus: Prometheus
) -> None:
    """retinad's dashboards and rules in retina naming read the recording rules, which sum
    Retina's source/destination series to per-endpoint rates: the same checks as on the
    stack without remote context (test_dashboards_on_prometheus.py) pass here too."""
    check_dashboard_queries(retina_stack, prometheus)
    check_rules(prometheus)
