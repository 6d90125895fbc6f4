"""A validator for the dashboard JSON shape Grafana (10, 11) imports.

No library checks Grafana dashboards short of running Grafana (the JSON schema Grafana
publishes, kinds/dashboard, is CUE and covers only part of a panel), so this checks what
breaks an import or a panel silently: ids, grid layout, datasource references, targets,
and variables every query uses.
"""

from __future__ import annotations

import re
from typing import Any

PANEL_TYPES = {"timeseries", "table", "stat", "heatmap", "bargauge", "gauge", "text"}
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
BUILTINS = {"__rate_interval", "__interval", "__range", "__interval_ms", "__range_s"}
VARIABLE = re.compile(r"\$(?:\{(\w+)(?::\w+)?\}|(\w+))")


def variables_used(text: str) -> set[str]:
    return {a or b for a, b in VARIABLE.findall(text)}


def problems(dash: dict[str, Any]) -> list[str]:
    """Every shape problem in ``dash``, each naming where; empty when Grafana can import it."""
    out: list[str] = []
    for key, kind in (("uid", str), ("title", str), ("schemaVersion", int), ("panels", list)):
        if not isinstance(dash.get(key), kind):
            out.append(f"top level: {key!r} missing or not {kind.__name__}")
    if out:
        return out
    if not 0 < len(dash["uid"]) <= 40:
        out.append(f"uid {dash['uid']!r}: Grafana wants 1-40 characters")
    if dash["schemaVersion"] < 36:
        out.append(f"schemaVersion {dash['schemaVersion']}: older than Grafana 9's 36")
    variables = dash.get("templating", {}).get("list", [])
    names = [v.get("name") for v in variables]
    defined = set(names) | BUILTINS
    if len(set(names)) != len(names):
        out.append(f"templating: duplicate variable names {names}")
    ds = [v for v in variables if v.get("type") == "datasource"]
    if not (ds and ds[0].get("name") == "datasource" and ds[0].get("query") == "prometheus"):
        out.append("templating: no prometheus datasource variable named 'datasource'")
    for v in variables:
        if v.get("type") != "query":
            continue
        where = f"variable {v.get('name')!r}"
        if v.get("datasource") != DATASOURCE:
            out.append(f"{where}: datasource is {v.get('datasource')!r}, not ${{datasource}}")
        query = v.get("query", {})
        if not (isinstance(query, dict) and query.get("query", "").startswith("label_values(")):
            out.append(f"{where}: query is not a label_values(...) query")
        else:
            for used in variables_used(query["query"]) - defined:
                out.append(f"{where}: uses undefined ${used}")
            if v.get("name") in variables_used(query["query"]):
                out.append(f"{where}: refers to itself")
    ids: set[int] = set()
    boxes: list[tuple[str, int, int, int, int]] = []
    for i, p in enumerate(dash["panels"]):
        where = f"panel {i} ({p.get('title')!r})"
        pid = p.get("id")
        if not isinstance(pid, int) or pid in ids:
            out.append(f"{where}: id {pid!r} missing or duplicate")
        ids.add(pid if isinstance(pid, int) else -1)
        g = p.get("gridPos", {})
        if not all(isinstance(g.get(k), int) for k in "xywh"):
            out.append(f"{where}: gridPos needs integer x, y, w, h, got {g!r}")
            continue
        if g["w"] <= 0 or g["h"] <= 0 or g["x"] < 0 or g["y"] < 0 or g["x"] + g["w"] > 24:
            out.append(f"{where}: gridPos {g} outside the 24-column grid")
        for other, x, y, w, h in boxes:
            if g["x"] < x + w and x < g["x"] + g["w"] and g["y"] < y + h and y < g["y"] + g["h"]:
                out.append(f"{where}: overlaps {other}")
        boxes.append((where, g["x"], g["y"], g["w"], g["h"]))
        if p.get("type") == "row":
            if not p.get("collapsed") and p.get("panels"):
                out.append(f"{where}: an open row keeps its panels at top level, not inside")
            continue
        out += _panel_problems(p, where, defined)
    return out


def _panel_problems(p: dict[str, Any], where: str, defined: set[str]) -> list[str]:
    out = []
    if p.get("type") not in PANEL_TYPES:
        out.append(f"{where}: unknown panel type {p.get('type')!r}")
    if p.get("datasource") != DATASOURCE:
        out.append(f"{where}: datasource is {p.get('datasource')!r}, not ${{datasource}}")
    if not p.get("title"):
        out.append(f"{where}: no title")
    if not isinstance(p.get("fieldConfig", {}).get("defaults"), dict):
        out.append(f"{where}: fieldConfig.defaults missing")
    targets = p.get("targets")
    if not targets:
        return [*out, f"{where}: no targets"]
    refs = [t.get("refId") for t in targets]
    if len(set(refs)) != len(refs) or not all(refs):
        out.append(f"{where}: refIds {refs} missing or repeated")
    for t in targets:
        tw = f"{where} target {t.get('refId')}"
        if t.get("datasource") != DATASOURCE:
            out.append(f"{tw}: datasource is {t.get('datasource')!r}, not ${{datasource}}")
        expr = t.get("expr")
        if not isinstance(expr, str) or not expr.strip():
            out.append(f"{tw}: empty expr")
            continue
        if expr.count("(") != expr.count(")") or expr.count("{") != expr.count("}"):
            out.append(f"{tw}: unbalanced brackets in {expr!r}")
        for used in variables_used(expr) - defined:
            out.append(f"{tw}: uses undefined ${used}")
        if p.get("type") == "heatmap" and t.get("format") != "heatmap":
            out.append(f"{tw}: a heatmap target needs format=heatmap")
        if p.get("type") == "table" and not t.get("instant"):
            out.append(f"{tw}: a table target should be instant")
    return out
