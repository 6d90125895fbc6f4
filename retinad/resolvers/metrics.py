"""retinad_resolver_up{resolver} and retinad_resolver_endpoints{resolver}.

An operator needs to see that names are missing because Docker is down, not because the
containers vanished: ``up`` is 1 while a resolver's index is in sync with its source.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from retinad import metric_names as naming
from retinad.resolvers.base import ResolverChain


class ResolverMetrics:
    """A scrape-time collector over the chain; reads flags and sizes, calls no API."""

    def __init__(self, chain: ResolverChain) -> None:
        self._chain = chain

    def collect(self) -> Iterable[Metric]:
        up = GaugeMetricFamily(
            naming.RESOLVER_UP,
            "1 when the resolver's index is in sync with its source, 0 while it reconnects.",
            labels=["resolver"],
        )
        size = GaugeMetricFamily(
            naming.RESOLVER_ENDPOINTS,
            "Endpoints (containers, pods, static entries, veths) in the resolver's index.",
            labels=["resolver"],
        )
        for r in self._chain.resolvers:
            up.add_metric([r.name], 1 if r.up else 0)
            size.add_metric([r.name], r.size())
        return [up, size]
