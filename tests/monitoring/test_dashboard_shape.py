"""The committed dashboards: generated from monitoring/*.py, in the shape Grafana imports."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from monitoring.generate import main as generate_main
from monitoring.generate import outputs
from tests.monitoring.grafana_shape import problems

DASHBOARDS = sorted((Path(__file__).parents[2] / "monitoring" / "dashboards").glob("*.json"))


def test_committed_files_are_what_the_code_generates() -> None:
    assert generate_main(["--check"]) == 0
    assert sorted(p for p in outputs() if p.suffix == ".json") == DASHBOARDS
    assert len(DASHBOARDS) == 4  # node and endpoint, in both namings


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_has_the_shape_grafana_imports(path: Path) -> None:
    dash = json.loads(path.read_text())
    assert problems(dash) == []
    kinds = {p["type"] for p in dash["panels"]}
    assert "timeseries" in kinds and "row" in kinds
    names = [v["name"] for v in dash["templating"]["list"]]
    if "endpoint" in path.name:
        assert names == ["datasource", "instance", "namespace", "name"]
    else:
        assert names == ["datasource", "instance"]


def _node() -> dict[str, Any]:
    dash: dict[str, Any] = json.loads(DASHBOARDS[-1].read_text())  # retinad-node.json
    return dash


@pytest.mark.parametrize(
    ("break_it", "message"),
    [
        (lambda d: d["panels"][1].update(id=d["panels"][0]["id"]), "id 1 missing or duplicate"),
        (lambda d: d["panels"][2]["gridPos"].update(x=0), "overlaps panel 1"),
        (lambda d: d["panels"][1]["gridPos"].update(w=30), "outside the 24-column grid"),
        (lambda d: d["panels"][1].update(datasource={"uid": "prom"}), "not ${datasource}"),
        (
            lambda d: d["panels"][1]["targets"][0].update(expr='up{x=~"$nope"}'),
            "uses undefined $nope",
        ),
        (lambda d: d["panels"][1]["targets"][0].update(expr="sum(rate(up[1m])"), "unbalanced"),
        (lambda d: d["panels"][1].update(targets=[]), "no targets"),
        (lambda d: d["templating"]["list"].pop(0), "no prometheus datasource variable"),
        (lambda d: d.update(schemaVersion=16), "older than Grafana 9"),
    ],
)
def test_validator_finds_each_breakage(break_it: Any, message: str) -> None:
    dash = copy.deepcopy(_node())
    assert DASHBOARDS[-1].name == "retinad-node.json"
    break_it(dash)
    found = problems(dash)
    assert any(message in p for p in found), found


def test_readme_names_every_panel_and_alert() -> None:
    from monitoring.rules import ALERTS

    readme = (Path(__file__).parents[2] / "monitoring" / "README.md").read_text()
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            if panel["type"] != "row":
                assert f"| {panel['title']} |" in readme, f"{path.name}: {panel['title']}"
    for alert in ALERTS:
        assert f"| {alert.name} |" in readme and f"**{alert.name}" in readme, alert.name
