"""Grafana dashboard JSON, built as plain dicts in the shape current Grafana (10, 11) imports.

Hand-written rather than grafanalib: grafanalib lags Grafana's schema (it has no
``$__rate_interval``-aware defaults and writes schemaVersion 12-era panels), and what the
dashboards need is a few dozen lines of dicts. Every panel and target points at the
``${datasource}`` variable, so one JSON works with whatever Prometheus the operator picks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SCHEMA_VERSION = 39
"""Grafana 10.4/11's dashboard schema version."""
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
WIDTH = 24
"""Grafana's grid is 24 columns wide."""

Json = dict[str, Any]


@dataclass
class Target:
    expr: str
    legend: str = ""
    instant: bool = False
    format: str = "time_series"


@dataclass
class Panel:
    title: str
    description: str
    targets: list[Target]
    kind: str = "timeseries"
    unit: str = "short"
    width: int = 12
    height: int = 8
    options: Json = field(default_factory=dict)


@dataclass
class Row:
    title: str
    panels: list[Panel]


def query_variable(name: str, label: str, query: str, *, multi: bool) -> Json:
    """A variable filled from ``label_values(...)``, as Grafana's Prometheus source does."""
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DATASOURCE,
        "query": {"query": query, "refId": f"{name}-variable"},
        "definition": query,
        "refresh": 2,
        "sort": 1,
        "multi": multi,
        "includeAll": multi,
        **({"allValue": ".*"} if multi else {}),
        "current": {},
        "options": [],
        "hide": 0,
    }


def datasource_variable() -> Json:
    return {
        "name": "datasource",
        "label": "Data source",
        "type": "datasource",
        "query": "prometheus",
        "current": {},
        "hide": 0,
        "options": [],
        "refresh": 1,
        "regex": "",
    }


def _panel_json(p: Panel, pid: int, x: int, y: int) -> Json:
    targets = []
    for i, t in enumerate(p.targets):
        targets.append(
            {
                "datasource": DATASOURCE,
                "refId": chr(ord("A") + i),
                "expr": t.expr,
                "legendFormat": t.legend or "__auto",
                "instant": t.instant,
                "range": not t.instant,
                "format": t.format,
                "editorMode": "code",
            }
        )
    out: Json = {
        "id": pid,
        "type": p.kind,
        "title": p.title,
        "description": p.description,
        "datasource": DATASOURCE,
        "gridPos": {"x": x, "y": y, "w": p.width, "h": p.height},
        "targets": targets,
        "fieldConfig": {"defaults": {"unit": p.unit}, "overrides": []},
        "options": p.options,
    }
    if p.kind == "heatmap":
        out["options"] = {"calculate": False, "yAxis": {"unit": p.unit}, **p.options}
    return out


def dashboard(
    uid: str, title: str, description: str, variables: list[Json], rows: list[Row]
) -> Json:
    """The whole dashboard: rows laid out left to right, wrapping at 24 columns."""
    panels: list[Json] = []
    pid, y = 1, 0
    for row in rows:
        panels.append(
            {
                "id": pid,
                "type": "row",
                "title": row.title,
                "collapsed": False,
                "gridPos": {"x": 0, "y": y, "w": WIDTH, "h": 1},
                "panels": [],
            }
        )
        pid, y, x, row_h = pid + 1, y + 1, 0, 0
        for p in row.panels:
            if x + p.width > WIDTH:
                x, y, row_h = 0, y + row_h, 0
            panels.append(_panel_json(p, pid, x, y))
            pid, x, row_h = pid + 1, x + p.width, max(row_h, p.height)
        y += row_h
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["retinad", "network", "ebpf"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "annotations": {"list": []},
        "links": [],
        "templating": {"list": [datasource_variable(), *variables]},
        "panels": panels,
    }
