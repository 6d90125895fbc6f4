"""The plugin contract: what the daemon needs from a data source, and nothing more.

A plugin owns its BPF programs, its attachments and its scrape-time collector. The daemon
calls ``start`` once (compile, load, attach: everything that can fail at start-up fails
here, with a message naming the cause), ``reload`` on SIGHUP with its new settings,
``collect`` on each scrape and ``stop`` on shutdown (detach what it attached, idempotent).
Plugins never import each other; what they share comes in through ``PluginContext``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from prometheus_client.metrics_core import Metric

from retinad.config.schema import LatencySettings, MetricsSettings, ResolverSettings
from retinad.resolvers.base import ResolverChain


@dataclass(frozen=True)
class PluginContext:
    """What every plugin may use besides its own config table."""

    metrics: MetricsSettings
    """Mode (basic/advanced), naming (prometheus/retina), ip label."""
    resolver: ResolverChain
    """Names IPs and interfaces as endpoints (the chain from [resolvers].order); its
    ``wait_change`` tells a plugin when to re-attribute its kernel map keys."""
    bpf_dir: Path
    """Where the BPF C sources live (bpf/ in a checkout, /usr/share/retinad/bpf installed)."""
    logger: logging.Logger
    """Already named ``retinad.<plugin>``."""
    series: ResolverSettings = field(default_factory=ResolverSettings)
    """Series hygiene: grace_period_seconds and max_endpoint_series."""
    latency: LatencySettings = field(default_factory=LatencySettings)
    """``[latency]``: targets and timeout, measured by packetparser's programs."""


class Plugin(Protocol):
    """One data source. Implementations live in retinad/plugins/<name>.py."""

    def start(self) -> None:
        """Compile, load and attach; raise a RetinadError naming the cause on failure."""

    def stop(self) -> None:
        """Remove everything this plugin attached or created. Safe to call twice."""

    def reload(self, settings: Any, metrics: MetricsSettings) -> None:
        """Apply a new config table (already validated). Keep serving on failure."""

    def collect(self) -> Iterable[Metric]:
        """Build this plugin's metric families from its maps; called on each scrape."""

    def describe(self) -> Iterable[Metric]:
        """The families collect() yields, without samples (never touches a map)."""

    def status(self) -> str:
        """One short line for systemd's STATUS= (e.g. "12 interfaces")."""

    def healthy(self) -> bool:
        """False when a background thread of the plugin has died; stops the watchdog."""


PluginFactory = Callable[[Any, PluginContext], Plugin]
"""Builds a plugin from its own config table and the shared context."""
