"""Metric names that a layer beside exporter/ needs to spell.

``exporter/naming.py`` is where every name is spelled, but resolvers/ may not import
exporter/ (tests/unit/test_layers.py enforces it), and ``resolvers/metrics.py`` exports
the resolver self metrics. Their names live here, below both; naming.py re-exports them,
so ``naming.RESOLVER_UP`` still works.
"""

from __future__ import annotations

RESOLVER_UP = "retinad_resolver_up"
RESOLVER_ENDPOINTS = "retinad_resolver_endpoints"
