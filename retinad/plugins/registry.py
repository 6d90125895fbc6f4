"""The explicit table of plugins: name -> (module, config table), in start order.

A plugin is added with one line here. Modules are imported by name when the plugin is
enabled, so a broken or heavy plugin costs nothing when disabled and there are no import
side effects. Each module exports ``create(settings, ctx) -> Plugin``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from retinad.config.schema import Settings
from retinad.plugins.base import PluginFactory


@dataclass(frozen=True)
class PluginSpec:
    name: str
    """Plugin and collector name (--collector.NAME, collect[]=NAME, [NAME] table)."""
    module: str
    section: Callable[[Settings], Any]
    """Picks the plugin's own config table out of Settings."""

    def factory(self) -> PluginFactory:
        mod = importlib.import_module(self.module)
        return cast(PluginFactory, mod.create)

    def enabled(self, settings: Settings) -> bool:
        return bool(self.section(settings).enabled)


PLUGINS: tuple[PluginSpec, ...] = (
    PluginSpec("packetparser", "retinad.plugins.packetparser", lambda s: s.packetparser),
    PluginSpec("dropreason", "retinad.plugins.dropreason", lambda s: s.dropreason),
)

PLUGIN_NAMES = tuple(p.name for p in PLUGINS)
