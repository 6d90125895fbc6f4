"""Start, run, reload and stop: the order of things and what happens when one fails.

Start: check the web config and bind the listeners first (cheap, and a mistake there
should fail before anything touches the kernel), then start resolvers, then each enabled
plugin (compile, load, attach), then READY=1. Any failure at start undoes what was done
and exits 1; nothing is left attached.

Run: the main loop owns the watchdog and handles SIGHUP reloads. Signal handlers only set
flags, so all work happens on the main thread.

Reload: a broken new config is logged and the old one stays in force. A valid one is
applied component by component; a component that fails to apply it keeps running as
before and the failure is logged.

Stop (SIGTERM/SIGINT): STOPPING=1, close listeners, stop plugins in reverse order (each
removes what it attached), stop resolvers, exit 0.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from retinad.config.schema import Settings
from retinad.daemon.systemd import Notifier
from retinad.errors import ConfigError, RetinadError
from retinad.exporter.collector import Collector, ExporterRegistry
from retinad.exporter.web import WebServer
from retinad.kernel.compile import find_bpf_dir
from retinad.kernel.features import bcc_version
from retinad.logs import setup_logging
from retinad.plugins.base import Plugin, PluginContext
from retinad.plugins.registry import PLUGINS, PluginSpec
from retinad.resolvers.base import ResolverChain
from retinad.resolvers.metrics import ResolverMetrics
from retinad.resolvers.registry import build_chain

SettingsLoader = Callable[[], Settings]
"""Re-reads the config (file + command-line overrides); raises ConfigError."""


class Daemon:
    """One running retinad."""

    def __init__(
        self,
        settings: Settings,
        *,
        loader: SettingsLoader,
        notifier: Notifier | None = None,
        logger: logging.Logger | None = None,
        bpf_dir: Path | None = None,
    ) -> None:
        self.settings = settings
        self._loader = loader
        self._notifier = notifier or Notifier()
        self._log = logger or logging.getLogger("retinad")
        self._bpf_dir = bpf_dir or find_bpf_dir()
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._plugins: dict[str, Plugin] = {}
        self._resolver: ResolverChain | None = None
        self._web: WebServer | None = None
        self.registry = ExporterRegistry(
            logger=self._log.getChild("exporter"),
            bcc_version=bcc_version(),
            python_runtime=settings.metrics.python_runtime,
        )

    # --- signals -----------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGINT, self._on_stop_signal)
        signal.signal(signal.SIGHUP, self._on_hup)

    def _on_stop_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stop.set()

    def _on_hup(self, signum: int, frame: FrameType | None) -> None:
        self._reload.set()

    def request_stop(self) -> None:
        self._stop.set()

    def request_reload(self) -> None:
        self._reload.set()

    # --- start -------------------------------------------------------------------------

    def start(self) -> None:
        """Bring everything up; on failure undo and raise the RetinadError."""
        n = self._notifier
        try:
            n.status("starting web server")
            self._web = WebServer(
                settings=self.settings.web,
                source=self.registry,
                logger=self._log.getChild("web"),
            )
            self._web.start()
            n.status("starting resolvers")
            self._resolver = build_chain(self.settings, self._log.getChild("resolver"))
            self._resolver.start()
            for spec in PLUGINS:
                if spec.enabled(self.settings):
                    n.status(f"starting {spec.name} (compiling and attaching)")
                    self._start_plugin(spec)
        except BaseException:
            self.shutdown()
            raise
        self.registry.set_collectors(self._collectors())
        self._log.info("ready: %s", self.status())

    def _collectors(self) -> dict[str, Collector]:
        """Plugins plus the resolvers' own health (selectable as collect[]=resolver)."""
        out: dict[str, Collector] = dict(self._plugins)
        if self._resolver is not None:
            out["resolver"] = ResolverMetrics(self._resolver)
        return out

    def _start_plugin(self, spec: PluginSpec) -> None:
        assert self._resolver is not None
        ctx = PluginContext(
            metrics=self.settings.metrics,
            resolver=self._resolver,
            bpf_dir=self._bpf_dir,
            logger=self._log.getChild(spec.name),
            series=self.settings.resolvers,
        )
        plugin = spec.factory()(spec.section(self.settings), ctx)
        try:
            plugin.start()
        except BaseException:
            plugin.stop()
            raise
        self._plugins[spec.name] = plugin
        self._log.info("%s started: %s", spec.name, plugin.status())

    def status(self) -> str:
        parts = [f"{name}: {p.status()}" for name, p in self._plugins.items()]
        if not parts:
            parts.append("no plugins enabled")
        if self._web is not None:
            addrs = ", ".join(
                f"[{h}]:{p}" if ":" in h else f"{h or '*'}:{p}"
                for h, p in self._web.bound_addresses
            )
            parts.append(f"serving on {addrs}")
        return "; ".join(parts)

    def healthy(self) -> bool:
        web_ok = self._web is not None and self._web.healthy()
        resolvers = self._resolver.resolvers if self._resolver is not None else []
        resolvers_ok = all(getattr(r, "alive", True) for r in resolvers)
        return web_ok and resolvers_ok and all(p.healthy() for p in self._plugins.values())

    # --- run ---------------------------------------------------------------------------

    def run(self) -> int:
        """Start, serve until SIGTERM/SIGINT, stop. Returns the exit code."""
        self.start()
        n = self._notifier
        n.ready(self.status())
        interval = n.watchdog_interval
        tick = min(1.0, interval) if interval else 1.0
        unhealthy_logged = False
        try:
            while not self._stop.wait(tick):
                if self._reload.is_set():
                    self._reload.clear()
                    self.reload()
                    n.ready(self.status())
                if interval:
                    if self.healthy():
                        n.watchdog()
                        unhealthy_logged = False
                    elif not unhealthy_logged:
                        self._log.error("a component is unhealthy; withholding WATCHDOG=1")
                        unhealthy_logged = True
        finally:
            n.stopping()
            self.shutdown()
            n.close()
        self._log.info("stopped")
        return 0

    # --- reload ------------------------------------------------------------------------

    def reload(self) -> None:
        """Re-read the config; keep the old one on any error."""
        self._notifier.reloading()
        try:
            new = self._loader()
        except ConfigError as err:
            self._log.error("reload refused, keeping the running config: %s", err)
            return
        old = self.settings
        if new == old:
            self._log.info("reload: configuration unchanged")
            return
        setup_logging(new.log.level, new.log.format)
        self.registry.set_python_runtime(new.metrics.python_runtime)
        if new.web != old.web:
            self._reload_web(new)
        if new.resolvers != old.resolvers:
            self._log.warning("reload: [resolvers] changes take effect on restart")
            new = dataclasses.replace(new, resolvers=old.resolvers)
        for spec in PLUGINS:
            self._reload_plugin(spec, old, new)
        self.settings = new
        self.registry.set_collectors(self._collectors())
        self._log.info("reloaded: %s", self.status())

    def _reload_web(self, new: Settings) -> None:
        web = WebServer(settings=new.web, source=self.registry, logger=self._log.getChild("web"))
        old_web = self._web
        if old_web is not None:
            old_web.stop()
        try:
            web.start()
        except RetinadError as err:
            self._log.error("reload: new [web] settings refused (%s); keeping the old ones", err)
            if old_web is not None:
                restored = WebServer(
                    settings=self.settings.web,
                    source=self.registry,
                    logger=self._log.getChild("web"),
                )
                restored.start()
                self._web = restored
            return
        self._web = web

    def _reload_plugin(self, spec: PluginSpec, old: Settings, new: Settings) -> None:
        now = spec.enabled(new)
        running = self._plugins.get(spec.name)
        try:
            if running is not None and not now:
                self._plugins.pop(spec.name).stop()
                self._log.info("%s stopped (disabled)", spec.name)
            elif running is None and now:
                self.settings = dataclasses.replace(self.settings, metrics=new.metrics)
                self._start_plugin(spec)
            elif running is not None and (
                spec.section(old) != spec.section(new) or old.metrics != new.metrics
            ):
                running.reload(spec.section(new), new.metrics)
        except RetinadError as err:
            self._log.error("reload of %s failed, it keeps its old settings: %s", spec.name, err)

    # --- stop --------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Undo everything start() did, in reverse order; safe to call twice."""
        if self._web is not None:
            self._web.stop()
        for name in reversed(list(self._plugins)):
            plugin = self._plugins.pop(name)
            try:
                plugin.stop()
            except Exception:
                self._log.exception("stopping %s failed", name)
        if self._resolver is not None:
            self._resolver.stop()
            self._resolver = None
