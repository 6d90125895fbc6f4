"""What a scrape returns: plugin collectors, each timed, plus retinad's own metrics.

Like node_exporter's NodeCollector: every selected collector runs on each scrape and always
yields ``retinad_scrape_collector_success{collector}`` and ``..._duration_seconds``; one
collector failing never fails the scrape. Build info and process metrics are always there,
also when ``collect[]`` selects a subset (node_exporter keeps them in a separate registry
for the same reason).
"""

from __future__ import annotations

import logging
import platform
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Protocol

from prometheus_client import GC_COLLECTOR, PLATFORM_COLLECTOR
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector

from retinad import __version__
from retinad.errors import RetinadError
from retinad.exporter import naming


class Collector(Protocol):
    def collect(self) -> Iterable[Metric]: ...


class _Snapshot:
    """A one-shot collector set for prometheus_client's encoders (they call collect())."""

    def __init__(self, metrics: Iterable[Metric]) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return self._metrics


class ExporterRegistry:
    """The MetricsSource the web server renders from."""

    def __init__(
        self,
        *,
        logger: logging.Logger,
        bcc_version: str | None,
        python_runtime: bool = False,
    ) -> None:
        self._log = logger
        self._lock = threading.Lock()
        self._collectors: dict[str, Collector] = {}
        self._process = ProcessCollector(registry=None)
        self._python_runtime = python_runtime
        self._build_labels = {
            "version": __version__,
            "python": platform.python_version(),
            "bcc": bcc_version or "none",
            "kernel": platform.release(),
        }

    def set_collectors(self, collectors: Mapping[str, Collector]) -> None:
        """Replace the named collectors at once (start and reload)."""
        with self._lock:
            self._collectors = dict(collectors)

    def set_python_runtime(self, enabled: bool) -> None:
        self._python_runtime = enabled

    def collector_names(self) -> Sequence[str]:
        with self._lock:
            return sorted(self._collectors)

    def select(self, collect: Sequence[str], exclude: Sequence[str]) -> list[str]:
        """Names chosen by collect[]/exclude[]; ValueError names an unknown collector."""
        names = self.collector_names()
        if collect and exclude:
            raise ValueError("collect[] and exclude[] cannot be combined")
        for n in (*collect, *exclude):
            if n not in names:
                raise ValueError(f"unknown collector {n!r} (enabled: {', '.join(names) or 'none'})")
        if collect:
            return [n for n in names if n in collect]
        return [n for n in names if n not in exclude]

    def gather(self, selected: Sequence[str]) -> Iterator[Metric]:
        yield self._build_info()
        yield from self._process.collect()
        if self._python_runtime:
            yield from GC_COLLECTOR.collect()
            yield from PLATFORM_COLLECTOR.collect()
        with self._lock:
            chosen = [(n, self._collectors[n]) for n in selected if n in self._collectors]
        success = GaugeMetricFamily(
            naming.SCRAPE_SUCCESS, "Whether a collector succeeded.", labels=["collector"]
        )
        duration = GaugeMetricFamily(
            naming.SCRAPE_DURATION, "Duration of a collector scrape.", labels=["collector"]
        )
        # Families with one name from several collectors (retinad_map_entries{map} from
        # each plugin) are merged: the exposition format allows one HELP/TYPE per name.
        merged: dict[str, Metric] = {}
        for name, collector in chosen:
            start = time.perf_counter()
            try:
                metrics = list(collector.collect())
                ok = 1.0
            except RetinadError as err:  # a known state (plugin not running): no traceback
                self._log.error("collector %s failed: %s", name, err)
                metrics, ok = [], 0.0
            except Exception:
                self._log.exception("collector %s failed", name)
                metrics, ok = [], 0.0
            duration.add_metric([name], time.perf_counter() - start)
            success.add_metric([name], ok)
            for m in metrics:
                if m.name in merged:
                    merged[m.name].samples.extend(m.samples)
                else:
                    merged[m.name] = m
        yield from merged.values()
        yield success
        yield duration

    def render(
        self, *, collect: Sequence[str], exclude: Sequence[str], accept: str | None
    ) -> tuple[bytes, str]:
        selected = self.select(collect, exclude)
        encoder, content_type = choose_encoder(accept or "")
        metrics = list(self.gather(selected))
        return encoder(_Snapshot(metrics)), content_type  # type: ignore[arg-type]

    def _build_info(self) -> Metric:
        info = GaugeMetricFamily(
            naming.BUILD_INFO,
            "A metric with a constant '1' value labeled by version, python, bcc and kernel.",
            labels=list(self._build_labels),
        )
        info.add_metric(list(self._build_labels.values()), 1.0)
        return info
