"""A real Prometheus (Debian's) scraping one target every second, with rule files loaded,
and Grafana's variable interpolation for evaluating dashboard queries against it."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.daemon_proc import http_get, try_get, wait_for

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
SCRAPE_INTERVAL = 1
"""Seconds; also the Grafana datasource's scrape interval, which $__rate_interval uses."""


@dataclass
class Prometheus:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def api(self, path: str, **params: str | list[str]) -> Any:
        query = urllib.parse.urlencode(params, doseq=True)
        status, body = http_get(f"{self.url}/api/v1/{path}?{query}", timeout=30)
        doc = json.loads(body)
        if status != 200 or doc.get("status") != "success":
            raise AssertionError(f"{path} {params}: HTTP {status}: {body[:500]}")
        return doc["data"]

    def instant(self, expr: str) -> list[dict[str, Any]]:
        return list(self.api("query", query=expr)["result"])

    def range(self, expr: str, seconds: int) -> list[dict[str, Any]]:
        now = float(self.api("query", query="time()")["result"][1])
        data = self.api(
            "query_range",
            query=expr,
            start=str(now - seconds),
            end=str(now),
            step=str(SCRAPE_INTERVAL),
        )
        return list(data["result"])

    def label_values(self, label: str, selector: str) -> list[str]:
        return sorted(self.api(f"label/{label}/values", **{"match[]": [selector]}))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running_prometheus(target: str, rule_files: list[Path], workdir: Path) -> Iterator[Prometheus]:
    """Prometheus scraping ``target`` (host:port) as job "retinad"; stopped and its data
    directory left in ``workdir`` for a failing test's post-mortem."""
    cfg = {
        "global": {
            "scrape_interval": f"{SCRAPE_INTERVAL}s",
            "evaluation_interval": f"{SCRAPE_INTERVAL}s",
        },
        "rule_files": [str(p) for p in rule_files],
        "scrape_configs": [{"job_name": "retinad", "static_configs": [{"targets": [target]}]}],
    }
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(cfg))
    port = _free_port()
    log = workdir / "prometheus.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    prom = Prometheus(f"http://127.0.0.1:{port}", proc, log)
    try:
        # /-/ready answers 503 until the TSDB is open and the rules are loaded.
        wait_for(
            lambda: (
                (try_get(f"{prom.url}/-/ready") or (0, ""))[0] == 200 or proc.poll() is not None
            ),
            timeout=60,
            what="prometheus ready",
        )
        assert proc.poll() is None, log.read_text()
        yield prom
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- Grafana's interpolation -------------------------------------------------------------
# As Grafana 10/11's Prometheus data source does it (datasource.ts, interpolateQueryExpr,
# classic behaviour): a variable that is neither multi nor includeAll only has backslashes
# and single quotes escaped; a multi or includeAll variable's values are regex-escaped (a
# metacharacter gets two backslashes, which the PromQL string turns into one) and joined
# as (a|b); "All" becomes the variable's allValue.
_REGEX_SPECIAL = re.compile(r"[$^*{}\[\]+?.()|]")


def regular_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\\\'")


def regex_escape(value: str) -> str:
    doubled = value.replace("\\", "\\" * 4)
    return _REGEX_SPECIAL.sub(lambda m: "\\\\" + m.group(0), doubled)


ALL = object()
"""The "All" choice of an includeAll variable."""


def interpolate(expr: str, variables: dict[str, Any], chosen: dict[str, Any]) -> str:
    """``expr`` with $var / ${var} replaced by the ``chosen`` values, plus the built-in
    intervals for a 1 s scrape interval and a 15 s dashboard range."""
    builtins = {
        "__rate_interval": f"{4 * SCRAPE_INTERVAL}s",  # max($__interval + scrape, 4 * scrape)
        "__interval": f"{SCRAPE_INTERVAL}s",
        "__range": "15s",
    }

    def one(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        if name in builtins:
            return builtins[name]
        var = variables[name]
        value = chosen[name]
        if value is ALL:
            return str(var["allValue"])
        if not var.get("multi") and not var.get("includeAll"):
            return regular_escape(value)
        values = value if isinstance(value, list) else [value]
        escaped = [regex_escape(v) for v in values]
        return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"

    return re.sub(r"\$(?:\{(\w+)\}|(\w+))", one, expr)


def label_values_query(query: str) -> tuple[str, str]:
    """``label_values(selector, label)`` -> (selector, label)."""
    m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", query.strip())
    assert m, f"not a label_values query: {query!r}"
    return m.group(1), m.group(2)
