"""Start, run, reload and stop: the order of things and what happens when one fails.

Start: check the web config and bind the listeners first (cheap, and a mistake there
should fail before anything touches the kernel), then start resolvers, then each enabled
plugin (compile, load, attach), then READY=1. Any failure at start undoes what was done
and exits 1; nothing is left attached.

Run: the main loop owns the watchdog and handles SIGHUP reloads. Signal handlers only set
flags, so all work happens on the main thread.

Reload (the rules, as Prometheus states its own; DESIGN.md repeats them): a config that
does not load is logged and nothing changes. A valid one is applied component by
component. A component that refuses its part keeps running exactly as before, the refusal
is logged, and ``self.settings`` keeps that component's old part: what the daemon believes
runs is always what runs, so the next SIGHUP tries the refused part again rather than
calling it "unchanged". [web] changes never leave retinad without a listener (the new
addresses are bound and the new web config loaded before the old ones go). A plugin that
can run neither its new nor its old settings is stopped and reported: its collector
answers ``retinad_scrape_collector_success 0``, /-/ready answers 503, and every later
SIGHUP tries to start it again. No failed reload ever ends the daemon. [resolvers]
changes take effect on restart.

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
from typing import Any

from prometheus_client.metrics_core import Metric

from retinad.config.load import ineffective_settings
from retinad.config.schema import MetricsSettings, Settings
from retinad.daemon.preflight import resolvers_in_use
from retinad.daemon.systemd import Notifier
from retinad.errors import ConfigError, PluginError, RetinadError
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


def _usable(settings: Settings) -> Settings:
    """``settings`` with only the resolvers that can be used (none in basic mode)."""
    order = resolvers_in_use(settings)
    return dataclasses.replace(
        settings, resolvers=dataclasses.replace(settings.resolvers, order=order)
    )


class FailedPlugin:
    """Stands in for a plugin that should run but does not, so every scrape says so."""

    def __init__(self, name: str, reason: str) -> None:
        self.name, self.reason = name, reason

    def collect(self) -> list[Metric]:
        raise PluginError(f"{self.name} is not running: {self.reason}")


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
        self._running: dict[str, tuple[Any, MetricsSettings]] = {}
        """The (config table, [metrics]) each running plugin was last given successfully."""
        self._failed: dict[str, str] = {}
        """Enabled plugins that are not running, with the reason."""
        self._ready = False
        self._resolver: ResolverChain | None = None
        self._web: WebServer | None = None
        self.registry = ExporterRegistry(
            logger=self._log.getChild("exporter"),
            bcc_version=bcc_version(),
            python_runtime=settings.metrics.python_runtime,
        )

    # --- signals -----------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        """Flags only; with SA_RESTART, so a signal arriving while bcc/LLVM compiles or
        a netlink call runs in C restarts the interrupted system call instead of failing
        it with EINTR (which C libraries do not all retry)."""
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGINT, self._on_stop_signal)
        signal.signal(signal.SIGHUP, self._on_hup)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.siginterrupt(sig, False)

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
                readiness=self.ready,
            )
            self._web.start()
            for warning in ineffective_settings(self.settings):
                self._log.warning("%s", warning)
            n.status("starting resolvers")
            self._resolver = build_chain(_usable(self.settings), self._log.getChild("resolver"))
            self._resolver.start()
            for spec in PLUGINS:
                if spec.enabled(self.settings):
                    n.status(f"starting {spec.name} (compiling and attaching)")
                    self._start_plugin(spec, self.settings)
        except BaseException:
            self.shutdown()
            raise
        self.registry.set_collectors(self._collectors())
        self._ready = True
        self._log.info("ready: %s", self.status())

    def _collectors(self) -> dict[str, Collector]:
        """Plugins (or their failure) plus the resolvers' own health (collect[]=resolver)."""
        out: dict[str, Collector] = dict(self._plugins)
        for name, reason in self._failed.items():
            out[name] = FailedPlugin(name, reason)
        if self._resolver is not None:
            out["resolver"] = ResolverMetrics(self._resolver)
        return out

    def _start_plugin(self, spec: PluginSpec, settings: Settings) -> None:
        """Start ``spec`` with its table and [metrics] from ``settings`` (the new settings
        on a reload: the daemon's own ``self.settings`` still holds the old ones)."""
        assert self._resolver is not None
        ctx = PluginContext(
            metrics=settings.metrics,
            resolver=self._resolver,
            bpf_dir=self._bpf_dir,
            logger=self._log.getChild(spec.name),
            series=self.settings.resolvers,
            latency=self.settings.latency,
        )
        plugin = spec.factory()(spec.section(settings), ctx)
        try:
            plugin.start()
        except BaseException:
            plugin.stop()
            raise
        self._plugins[spec.name] = plugin
        self._running[spec.name] = (spec.section(settings), settings.metrics)
        self._failed.pop(spec.name, None)
        self._log.info("%s started: %s", spec.name, plugin.status())

    def ready(self) -> bool:
        """Every enabled plugin attached: the condition for READY=1 and /-/ready."""
        return self._ready and not self._failed

    def status(self) -> str:
        parts = [f"{name}: {p.status()}" for name, p in self._plugins.items()]
        parts += [f"{name}: FAILED ({reason})" for name, reason in self._failed.items()]
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
                    try:
                        self.reload()
                    except Exception:  # a bug, not a refusal: log it, keep serving
                        self._log.exception("reload failed unexpectedly; still running")
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
        """Re-read the config and apply what changed (the rules: module docstring)."""
        self._notifier.reloading()
        try:
            new = self._loader()
        except ConfigError as err:
            self._log.error("reload refused, keeping the running config: %s", err)
            return
        old = self.settings
        if new == old and not self._failed:
            self._log.info("reload: configuration unchanged")
            return
        setup_logging(new.log.level, new.log.format)
        self.registry.set_python_runtime(new.metrics.python_runtime)
        applied = dataclasses.replace(
            old, log=new.log, metrics=new.metrics, web=self._apply_web(new)
        )
        for warning in ineffective_settings(new):
            self._log.warning("reload: %s", warning)
        if _usable(new).resolvers != _usable(old).resolvers:
            self._log.warning("reload: [resolvers] changes take effect on restart")
        if new.latency != old.latency:
            applied = dataclasses.replace(applied, latency=self._reload_latency(new))
        for spec in PLUGINS:
            section = self._reload_plugin(spec, new)
            applied = dataclasses.replace(applied, **{spec.name: section})
        self.settings = applied
        self.registry.set_collectors(self._collectors())
        if applied == new:
            self._log.info("reloaded: %s", self.status())
        else:
            self._log.warning("reloaded in part (refusals above): %s", self.status())

    def _reload_latency(self, new: Settings) -> Any:
        """New targets go into the running programs' target map; a new timeout or map size
        (compiled in), or latency compiled out, waits for a restart. Returns the [latency]
        settings that run after this reload."""
        pp = self._plugins.get("packetparser")
        setter = getattr(pp, "set_latency_targets", None)
        if setter is not None and setter(new.latency):
            self._log.info("reload: [latency] targets applied: %d", len(new.latency.targets))
            return new.latency
        self._log.warning(
            "reload: [latency] changes take effect on restart (a new timeout_seconds or "
            "max_pending, or latency compiled out, needs new programs)"
        )
        return self.settings.latency

    def _apply_web(self, new: Settings) -> Any:
        """The [web] settings that run after this reload: the new ones, or the old ones
        when refused (the listener is switched in place, never stopped first)."""
        web = self._web
        assert web is not None
        if new.web == web.settings:
            return web.settings
        try:
            web.reconfigure(new.web)
        except RetinadError as err:
            self._log.error("reload: new [web] settings refused, keeping the old ones: %s", err)
        return web.settings

    def _reload_plugin(self, spec: PluginSpec, new: Settings) -> Any:
        """Apply ``new`` to one plugin; returns the table that is now in force."""
        name, want = spec.name, spec.section(new)
        running = self._plugins.get(name)
        current = self._running.get(name, (spec.section(self.settings), self.settings.metrics))
        if running is not None and not spec.enabled(new):
            self._stop_plugin(name)
            self._log.info("%s stopped (disabled)", name)
            return want
        if not spec.enabled(new):
            self._failed.pop(name, None)
            return want
        if running is None:
            try:
                self._start_plugin(spec, new)
            except RetinadError as err:
                self._failed[name] = str(err)
                self._log.error("reload: %s could not start: %s", name, err)
                return current[0]
            return want
        if current == (want, new.metrics):
            return want
        try:
            running.reload(want, new.metrics)
        except RetinadError as err:
            if running.healthy():
                self._log.error("reload of %s refused, it keeps its old settings: %s", name, err)
                return current[0]
            self._stop_plugin(name)
            self._failed[name] = str(err)
            self._log.error(
                "reload of %s failed and its old settings could not be restored; it is "
                "stopped until a later reload starts it: %s",
                name,
                err,
            )
            return current[0]
        self._running[name] = (want, new.metrics)
        return want

    def _stop_plugin(self, name: str) -> None:
        plugin = self._plugins.pop(name)
        self._running.pop(name, None)
        self.registry.set_collectors(self._collectors())  # no scrape reaches it any more
        try:
            plugin.stop()
        except Exception:
            self._log.exception("stopping %s failed", name)

    # --- stop --------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Undo everything start() did, in reverse order; safe to call twice."""
        self._ready = False
        if self._web is not None:
            self._web.stop()  # waits for scrapes in flight: none reads a plugin after it
        for name in reversed(list(self._plugins)):
            self._stop_plugin(name)
        if self._resolver is not None:
            try:
                self._resolver.stop()
            except Exception:  # a resolver that died badly must not keep the others up
                self._log.exception("stopping the resolvers failed")
            self._resolver = None
