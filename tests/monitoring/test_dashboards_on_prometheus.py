"""Every dashboard query on a real Prometheus scraping a real retinad, in both namings.

The stack (tests/monitoring/stack.py) makes traffic, TCP resets and drops, answered and
unanswered connections to two latency targets, and flow events; Prometheus scrapes every
second with the generated recording and alert rules loaded. Each variable is filled from
its own label_values() query, as Grafana does, and each panel query, with the variables
interpolated the way Grafana's Prometheus source does it, must evaluate as a range query
without error, return series with a value other than 0 (but for the few fault panels in
ZERO_ON_THIS_STACK), and carry every label its legend shows. So a renamed metric or label,
or a family the daemon stops filling, breaks this test, not an operator's dashboard.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from monitoring.dashboards import build
from monitoring.generate import rule_file_name
from retinad.exporter.naming import Naming
from tests.daemon_proc import wait_for
from tests.monitoring.prometheus import (
    ALL,
    Prometheus,
    interpolate,
    label_values_query,
    running_prometheus,
)
from tests.monitoring.stack import Stack

MONITORING = Path(__file__).parents[2] / "monitoring"


def dashboards(naming: Naming) -> list[Path]:
    return [MONITORING / "dashboards" / name for name in sorted(build(naming))]


@pytest.fixture(scope="module")
def prometheus(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    rules = [MONITORING / "rules" / rule_file_name(stack.naming)]
    workdir = tmp_path_factory.mktemp(f"prometheus-{stack.naming}")
    with running_prometheus(f"127.0.0.1:{stack.port}", rules, workdir) as prom:
        # Enough scrapes for a rate over $__rate_interval, and every recording rule
        # evaluated on them.
        wait_for(
            lambda: prom.instant('count_over_time(up{job="retinad"}[10s]) >= 8'),
            timeout=90,
            what="8 scrapes of retinad",
        )
        yield prom


def choose(prom: Prometheus, variables: dict[str, Any], stack: Stack) -> dict[str, Any]:
    """Fill each variable from its own query, in order, picking what an operator looking at
    this stack would: our instance, every namespace ("All"), and shop/frontend."""
    want = {"instance": f"127.0.0.1:{stack.port}", "namespace": ALL, "name": "frontend"}
    chosen: dict[str, Any] = {}
    for name, var in variables.items():
        if var["type"] != "query":
            continue
        selector, label = label_values_query(interpolate(var["query"]["query"], variables, chosen))
        offered = prom.label_values(label, selector)  # raises if the query fails
        assert offered, f"variable {name}: {var['query']['query']} offers nothing"
        if want[name] is ALL:
            assert var["includeAll"], f"variable {name} has no All"
        else:
            assert want[name] in offered, f"variable {name}: {want[name]!r} not in {offered}"
        chosen[name] = want[name]
    return chosen


ZERO_ON_THIS_STACK = {
    # Faults a healthy stack does not make: series exist (at 0) but every rate is 0. The
    # rules test below checks the alerts on them stay silent.
    "Overflow packets/s",  # no map is full
    "Label sets refused by the series cap",  # the cap is far above this stack's series
    "Flow events lost/s",  # the ring and the queue keep up with ~200 events/s
}
"""Panel titles whose every value is 0 on this stack; every other panel must show a
number other than 0 (a series of zeros is what a family that is never filled exports)."""


def nonzero(series: dict[str, Any]) -> bool:
    """Some sample of a range-query series is a number other than 0 (NaN is not: a
    quantile of no observations)."""
    return any(math.isfinite(v) and v != 0 for v in (float(x) for _, x in series["values"]))


def legend_labels(legend: str) -> set[str]:
    return set(re.findall(r"\{\{\s*(\w+)\s*\}\}", legend))


def test_every_dashboard_query_returns_data(stack: Stack, prometheus: Prometheus) -> None:
    check_dashboard_queries(stack, prometheus)


def check_dashboard_queries(stack: Stack, prometheus: Prometheus) -> None:
    """Every panel of retinad's dashboards in the stack's naming returns data with the
    labels its legend shows, the latency and flow-event panels included."""
    checked, failures = 0, []
    for path in dashboards(stack.naming):  # type: ignore[arg-type]
        dash = json.loads(path.read_text())
        variables = {v["name"]: v for v in dash["templating"]["list"]}
        chosen = choose(prometheus, variables, stack)
        for panel in dash["panels"]:
            if panel["type"] == "row":
                continue
            title = panel["title"]
            for target in panel["targets"]:
                expr = interpolate(target["expr"], variables, chosen)
                result = prometheus.range(expr, 15)
                checked += 1
                if not result:
                    failures.append(f"{path.name} {title!r} {target['refId']}: empty: {expr}")
                    continue
                # Prometheus drops empty labels (a host's namespace=""), so each legend label
                # must appear on some series, not all.
                wanted = legend_labels(target["legendFormat"]) - {"le"}
                missing = wanted - {k for series in result for k in series["metric"]}
                if missing:
                    failures.append(f"{path.name} {title!r}: no series has {missing}")
                if title not in ZERO_ON_THIS_STACK and not any(map(nonzero, result)):
                    failures.append(f"{path.name} {title!r} {target['refId']}: all 0: {expr}")
    assert failures == [], "\n".join(failures)
    # every target of the node and endpoint dashboards; retina naming: 5 more latency
    # targets (target apiserver under Retina's names) and no peers row
    assert checked == (29 + 8 if stack.naming == "prometheus" else 34 + 6)


def test_every_rule_evaluates_on_real_data(stack: Stack, prometheus: Prometheus) -> None:
    check_rules(prometheus)


NO_RESPONSE_TARGETS = {"web", "apiserver"}
"""The stack's latency targets, both sent SYNs that are dropped (stack.py)."""

SILENT_HERE_BUT_READING = {
    "RetinadTargetLatencyHigh": ("target", NO_RESPONSE_TARGETS),  # handshakes take ~ms here
    "RetinadEventsLost": ("stage", {"kernel", "queue"}),
}
"""Alerts on the latency and flow-event families, silent on this stack: the label their
series carry once the threshold is taken off, and its values."""


def check_rules(prometheus: Prometheus) -> None:
    """The generated rules load and evaluate without error; the recording rules the
    dashboards read produce series; on this stack no alert fires, and the one whose
    condition the stack makes true, RetinadTargetNoResponse, is pending for exactly the
    two targets whose SYNs are dropped: its query reads the names and labels the daemon
    exports (in retina naming, target apiserver under Retina's own name and label)."""
    never = "0001-01-01T00:00:00Z"

    def evaluated() -> list[dict[str, Any]] | None:
        groups: list[dict[str, Any]] = prometheus.api("rules")["groups"]
        rules = [r for g in groups for r in g["rules"]]
        if any(r["lastEvaluation"] == never for r in rules):
            return None
        no_response = next(r for r in rules if r["name"] == "RetinadTargetNoResponse")
        pending = {a["labels"].get("target") for a in no_response["alerts"]}
        return rules if pending == NO_RESPONSE_TARGETS else None

    rules = wait_for(evaluated, timeout=60, what="every rule evaluated, no-response pending")
    assert {r["health"] for r in rules} == {"ok"}, [r for r in rules if r["health"] != "ok"]
    assert len(rules) == 14
    for r in rules:
        if r["type"] == "recording":
            assert prometheus.instant(r["name"]), f"{r['name']} records nothing"
        elif r["name"] == "RetinadHighDropRate":
            # dropreason counts the whole host's drops, other processes' too: it may be
            # pending, but nothing on this host drops 100/s for the 10 minutes it waits.
            assert r["state"] in ("inactive", "pending"), r
        elif r["name"] in SILENT_HERE_BUT_READING:
            # silent on a healthy stack; with the threshold taken off, the same query must
            # return the stack's series, so it reads names and labels the daemon exports
            assert r["state"] == "inactive", r
            label, want = SILENT_HERE_BUT_READING[r["name"]]
            relaxed = re.sub(r" > [0-9.]+", " >= 0", r["query"])
            assert relaxed != r["query"], r["query"]
            assert {x["metric"].get(label) for x in prometheus.instant(relaxed)} == want, relaxed
        elif r["name"] == "RetinadTargetNoResponse":
            # for: 10m, so pending for the whole test, never firing
            assert r["state"] == "pending", r
            assert sorted(a["labels"]["target"] for a in r["alerts"]) == sorted(
                NO_RESPONSE_TARGETS
            ), r
        else:
            assert r["state"] == "inactive", r
