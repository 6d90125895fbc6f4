"""The packetparser plugin: tc programs counting TCP/UDP per interface and per endpoint.

Lifecycle: ``start`` compiles bpf/packetparser.c with the settings as -D defines, loads its
four programs, inserts each map's overflow keys, then follows netlink link events
(kernel/links.py): every interface that the selection (kernel/interfaces.py) picks is
attached as soon as it appears (kernel/attach.py), and forgotten when it disappears.
``collect`` batch-reads the maps at scrape time (kernel/maps.py) and builds the families
(packetparser_metrics.py): a scrape costs a few syscalls per map, whatever the packet
rate, and nothing runs per packet in user space.

Attach failures (an interface vanishing mid-attach, a foreign filter in our slot) are
logged and counted in retinad_attach_errors_total{reason}; they never stop the plugin.
"""

from __future__ import annotations

import ctypes
import dataclasses
import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from retinad.config.schema import MetricsSettings, PacketParserSettings
from retinad.errors import AttachError, PluginError, RetinadError
from retinad.exporter import naming
from retinad.exporter.ledger import Labels, Record, SeriesLedger, Values
from retinad.exporter.naming import series_dropped
from retinad.kernel import abi
from retinad.kernel.attach import Attacher, Attachment, Hook, Program, make_attacher
from retinad.kernel.attach import remove_stale_filters as _remove_stale
from retinad.kernel.compile import compile_program
from retinad.kernel.interfaces import LinkInfo, Role, role_of
from retinad.kernel.links import LinkWatcher
from retinad.kernel.maps import BatchReader
from retinad.plugins.base import PluginContext
from retinad.plugins.packetparser_metrics import (
    Reading,
    basic_families,
    endpoint_families,
    endpoint_overflow,
    endpoint_records,
    overflow_packets,
    remote_families,
    remote_overflow,
    remote_records,
    traffic_values,
)
from retinad.plugins.sweeper import Sweeper

SOURCE = "packetparser.c"
IFACE_KEYS = 4096
"""Capacity of the per-interface map: 2048 host interfaces, both directions."""
OVERFLOW_SLOTS = 2
"""Each map holds one overflow key per direction on top of its configured capacity."""

PROGRAMS: dict[Role, dict[Hook, str]] = {
    Role.HOST: {Hook.INGRESS: "pp_host_ingress", Hook.EGRESS: "pp_host_egress"},
    Role.CONTAINER: {Hook.INGRESS: "pp_ep_ingress", Hook.EGRESS: "pp_ep_egress"},
}
MAP_LABELS = {
    "pp_iface": "packetparser_interface",
    "pp_endpoint": "packetparser_endpoint",
    "pp_remote": "packetparser_remote",
}
"""BPF map name -> value of the ``map`` label on retinad_map_* series."""

_Totals = dict[str, dict[Labels, Values]]
"""Ledger totals per BPF map name."""


@dataclass
class _Attached:
    role: Role
    att: Attachment


@dataclass(frozen=True)
class _KernelConfig:
    """The settings compiled into the programs; changing any of them means a reload."""

    advanced: bool
    remote: bool
    max_endpoints: int
    max_remote_flows: int
    attach_mode: str

    @classmethod
    def of(cls, s: PacketParserSettings, m: MetricsSettings) -> _KernelConfig:
        advanced = m.mode == "advanced"
        return cls(advanced, advanced and s.remote_context, s.max_endpoints,
                   s.max_remote_flows, s.attach_mode)  # fmt: skip


class PacketParser:
    """The plugin object the daemon drives (see retinad/plugins/base.py)."""

    def __init__(self, settings: PacketParserSettings, ctx: PluginContext) -> None:
        self.settings = settings
        self.ctx = ctx
        self._log = ctx.logger
        self._lock = threading.RLock()
        self._read_lock = threading.Lock()
        self._bpf: Any = None
        self._programs: dict[str, Program] = {}
        self._readers: dict[str, BatchReader[Any, abi.TrafficValue]] = {}
        self._attacher: Attacher | None = None
        self._watcher: LinkWatcher | None = None
        self._attached: dict[int, _Attached] = {}
        self._container_ifindexes: set[int] = set()
        self._errors: Counter[str] = Counter()
        self._kernel: _KernelConfig | None = None
        self._ledgers: dict[str, SeriesLedger] = {}
        self._sweeper: Sweeper | None = None
        self._running = False
        """Attach only while True (under _lock): a link callback that comes late from a
        stopping watcher must not attach the programs stop() is about to close, or the
        next start finds the interface "already attached" to a dead generation."""

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        kc = _KernelConfig.of(self.settings, self.ctx.metrics)
        try:
            self._attacher = make_attacher(self.settings.attach_mode)
            self._load(kc)
            self._kernel = kc
            with self._lock:
                self._running = True
            self._watcher = LinkWatcher(
                on_link=self._on_link,
                on_link_removed=self._on_link_removed,
                logger=self._log,
                name="packetparser-links",
            )
            self._watcher.start()
            self._sweep_stale()
            if self._ledgers:
                self._sweeper = Sweeper(
                    self.ctx.resolver, self._account, logger=self._log, name="packetparser-sweep"
                )
                self._sweeper.start()
        except RetinadError:
            self.stop()
            raise
        except Exception as err:
            self.stop()
            raise PluginError(f"packetparser: could not start: {err}") from err
        self._log.info("%s", self.status())

    def stop(self) -> None:
        with self._lock:
            self._running = False
        if self._sweeper is not None:
            self._sweeper.stop()
            self._sweeper = None
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None
        with self._lock:
            for ifindex in list(self._attached):
                self._detach(ifindex)
        with self._read_lock:
            self._readers.clear()
            self._ledgers.clear()
            self._programs.clear()
            if self._bpf is not None:
                self._bpf.cleanup()
                self._bpf = None
        self._kernel = None

    def reload(self, settings: PacketParserSettings, metrics: MetricsSettings) -> None:
        """Re-select interfaces; recompile only when a compiled-in setting changed."""
        old_settings, old_ctx = self.settings, self.ctx
        new_ctx = dataclasses.replace(self.ctx, metrics=metrics)
        if _KernelConfig.of(settings, metrics) == self._kernel:
            if metrics != old_ctx.metrics:  # label shapes changed: bind keys afresh
                with self._read_lock:
                    self._ledgers = {n: self._new_ledger(n, metrics) for n in self._ledgers}
            with self._lock:
                self.settings, self.ctx = settings, new_ctx
                links = self._watcher.links() if self._watcher else {}
                for ifindex in list(self._attached):
                    if ifindex not in links:
                        self._detach(ifindex)
                for link in links.values():
                    self._reconcile(link)
            self._log.info("reloaded: %s", self.status())
            return
        self._log.info("reload changes compiled-in settings: reloading the programs")
        self.stop()
        self.settings, self.ctx = settings, new_ctx
        try:
            self.start()
        except RetinadError as err:
            self._log.error("reload failed (%s); restarting with the previous settings", err)
            self.settings, self.ctx = old_settings, old_ctx
            self.start()  # raises if the old settings fail too: then nothing runs
            raise PluginError(
                f"packetparser: new settings refused, running the old: {err}"
            ) from err

    def healthy(self) -> bool:
        sweeping = self._sweeper is None or self._sweeper.alive
        return self._watcher is not None and self._watcher.alive and sweeping

    def status(self) -> str:
        mode = self._attacher.mode if self._attacher else "none"
        return f"attached to {len(self._attached)} interfaces ({mode})"

    # --- loading ----------------------------------------------------------------------------

    def _load(self, kc: _KernelConfig) -> None:
        defines = {
            "RETINAD_ADVANCED": int(kc.advanced),
            "RETINAD_REMOTE_CONTEXT": int(kc.remote),
            "RETINAD_IFACE_ENTRIES": IFACE_KEYS + OVERFLOW_SLOTS,
            "RETINAD_ENDPOINT_ENTRIES": kc.max_endpoints + OVERFLOW_SLOTS,
            "RETINAD_REMOTE_ENTRIES": kc.max_remote_flows + OVERFLOW_SLOTS,
        }
        from bcc import BPF

        self._bpf = compile_program(self.ctx.bpf_dir.resolve(), SOURCE, defines)
        for progs in PROGRAMS.values():
            for name in progs.values():
                try:
                    fn = self._bpf.load_func(name.encode(), BPF.SCHED_CLS)
                except Exception as err:
                    raise PluginError(f"packetparser: loading program {name}: {err}") from err
                self._programs[name] = Program(fd=fn.fd, name=name)
        maps: list[tuple[str, type[ctypes.Structure]]] = [("pp_iface", abi.IfaceKey)]
        if kc.advanced:
            maps.append(("pp_endpoint", abi.EndpointKey))
        if kc.remote:
            maps.append(("pp_remote", abi.RemoteKey))
        with self._read_lock:  # scrapes iterate _readers/_ledgers under this lock
            for name, key_type in maps:
                table = self._bpf[name.encode()]
                self._insert_overflow_keys(name, table, key_type)
                self._readers[name] = BatchReader(table, key_type, abi.TrafficValue, percpu=True)
                if name != "pp_iface":
                    self._ledgers[name] = self._new_ledger(name, self.ctx.metrics)

    def _new_ledger(self, name: str, metrics: MetricsSettings) -> SeriesLedger:
        reader = self._readers[name]

        def take(key: bytes) -> Values | None:
            value = reader.take(reader.key_type.from_buffer_copy(key))
            return None if value is None else traffic_values(value)

        overflow = endpoint_overflow if name == "pp_endpoint" else remote_overflow
        return SeriesLedger(
            width=2 + abi.TCP_NFLAGS,
            grace=float(self.ctx.series.grace_period_seconds),
            cap=self.ctx.series.max_endpoint_series,
            overflow=overflow(metrics),
            take=take,
        )

    @staticmethod
    def _insert_overflow_keys(name: str, table: Any, key_type: type[ctypes.Structure]) -> None:
        """One overflow key per direction, present before any program can run."""
        for direction in (abi.DIR_INGRESS, abi.DIR_EGRESS):
            key = key_type()
            key.direction = direction  # type: ignore[attr-defined]
            if key_type is not abi.IfaceKey:
                key.family = abi.FAMILY_OVERFLOW  # type: ignore[attr-defined]
            try:
                table[table.Key.from_buffer_copy(bytes(key))] = table.Leaf()
            except Exception as err:
                raise PluginError(
                    f"packetparser: map {name}: inserting overflow key: {err}"
                ) from err

    # --- interfaces ---------------------------------------------------------------------

    def _on_link(self, link: LinkInfo) -> None:
        with self._lock:
            self._reconcile(link)

    def _on_link_removed(self, link: LinkInfo) -> None:
        with self._lock:
            if link.ifindex in self._attached:
                self._log.info("%s (ifindex %d) is gone", link.name, link.ifindex)
                self._detach(link.ifindex, gone=True)

    def _reconcile(self, link: LinkInfo) -> None:
        """Attach, re-attach or detach one interface so it matches the selection."""
        if not self._running:
            return
        role = role_of(
            link,
            self.settings.interfaces,
            container_interfaces=self.settings.container_interfaces,
        )
        current = self._attached.get(link.ifindex)
        if current is not None and current.role == role:
            return
        if current is not None:
            self._detach(link.ifindex)
        if role is None or self._attacher is None:
            return
        progs = {hook: self._programs[name] for hook, name in PROGRAMS[role].items()}
        try:
            att = self._attacher.attach(link.ifindex, link.name, progs)
        except AttachError as err:
            self._errors[err.reason] += 1
            self._log.warning("not attached: %s", err)
            return
        self._attached[link.ifindex] = _Attached(role, att)
        if role is Role.CONTAINER:
            self._container_ifindexes.add(link.ifindex)
        else:
            self._container_ifindexes.discard(link.ifindex)
        self._log.info("attached to %s (ifindex %d) as %s", link.name, link.ifindex, role.value)

    def _detach(self, ifindex: int, *, gone: bool = False) -> None:
        entry = self._attached.pop(ifindex, None)
        if entry is None or self._attacher is None:
            return
        try:
            self._attacher.detach(entry.att)
        except Exception as err:
            if not gone:
                self._log.warning("detaching from %s failed: %s", entry.att.ifname, err)

    def _sweep_stale(self) -> None:
        """Remove filters an earlier run left on interfaces this run does not hold by clsact."""
        if self._watcher is None:
            return
        with self._lock:
            keep = set()
            if self._attacher is not None and self._attacher.mode == "clsact":
                keep = set(self._attached)
            for ifindex, link in self._watcher.links().items():
                if ifindex in keep:
                    continue
                try:
                    n = _remove_stale(ifindex)
                except Exception as err:
                    self._log.warning(
                        "%s: removing stale retinad filters failed: %s", link.name, err
                    )
                    continue
                if n:
                    self._log.info("%s: removed %d stale retinad filters", link.name, n)

    # --- metrics ------------------------------------------------------------------------

    def _account(self) -> tuple[dict[str, list[tuple[Any, abi.TrafficValue]]], _Totals]:
        """Read every map and pass the named endpoint keys through the ledgers.

        One lock around read and ledger update: the sweeper and concurrent scrapes must not
        interleave, or a key taken by one pass would look vanished to the other.
        """
        metrics = self.ctx.metrics
        with self._lock:
            containers = frozenset(self._container_ifindexes)
        with self._read_lock:
            data = {name: list(r.read()) for name, r in self._readers.items()}
            reading = Reading(
                iface=data.get("pp_iface", []),
                endpoint=data.get("pp_endpoint"),
                remote=data.get("pp_remote"),
                container_ifindexes=containers,
            )
            totals: _Totals = {}
            for name, ledger in self._ledgers.items():
                named = endpoint_records if name == "pp_endpoint" else remote_records
                records: list[Record] = named(reading, self.ctx.resolver, metrics)
                totals[name] = ledger.update(records)
        return data, totals

    def collect(self) -> Iterable[Metric]:
        data, totals = self._account()
        metrics = self.ctx.metrics
        yield from basic_families(Reading(iface=data.get("pp_iface", [])), metrics)
        if "pp_endpoint" in totals:
            yield from endpoint_families(totals["pp_endpoint"], metrics)
        if "pp_remote" in totals:
            yield from remote_families(totals["pp_remote"], metrics)
        yield from self._self_metrics(data)

    def _self_metrics(self, data: dict[str, list[tuple[Any, abi.TrafficValue]]]) -> list[Metric]:
        triples = [
            (MAP_LABELS[name], len(data[name]), int(r.table.max_entries))
            for name, r in self._readers.items()
            if name in data
        ]
        out = naming.map_gauges(triples)
        out.append(overflow_packets((MAP_LABELS[n], recs) for n, recs in data.items()))
        out.append(series_dropped((MAP_LABELS[n], lg.dropped) for n, lg in self._ledgers.items()))
        out.extend(self._attach_metrics())
        return out

    def _attach_metrics(self) -> list[Metric]:
        errors = CounterMetricFamily(
            naming.ATTACH_ERRORS,
            "Failed attempts to attach retinad's programs, by reason.",
            labels=["reason"],
        )
        attached = GaugeMetricFamily(
            naming.ATTACHED_INTERFACES,
            "Interfaces carrying packetparser's programs, by role.",
            labels=["role"],
        )
        with self._lock:
            for reason, n in sorted(self._errors.items()):
                errors.add_metric([reason], n)
            roles = Counter(a.role for a in self._attached.values())
        for role in Role:
            attached.add_metric([role.value], roles.get(role, 0))
        return [errors, attached]

    def describe(self) -> Iterable[Metric]:
        m = self.ctx.metrics
        specs = [naming.FORWARD_PACKETS, naming.FORWARD_BYTES, naming.TCP_FLAGS]
        if m.mode == "advanced":
            specs += [
                naming.ENDPOINT_FORWARD_PACKETS,
                naming.ENDPOINT_FORWARD_BYTES,
                naming.ENDPOINT_TCP_FLAGS,
            ]
            if self.settings.remote_context:
                specs += [naming.REMOTE_FORWARD_PACKETS, naming.REMOTE_FORWARD_BYTES]
        fams = [s.family(m.naming, ip_label=m.ip_label) for s in specs]
        fams += naming.map_gauges([])
        fams.append(overflow_packets([]))
        fams.append(series_dropped([]))
        fams += self._attach_metrics()
        return fams

    # --- for tests and diagnostics ----------------------------------------------------------

    def attached(self) -> dict[int, tuple[str, Role]]:
        """ifindex -> (interface name, role) of the current attachments."""
        with self._lock:
            return {i: (a.att.ifname, a.role) for i, a in self._attached.items()}

    def attach_errors(self) -> dict[str, int]:
        with self._lock:
            return dict(self._errors)


def create(settings: PacketParserSettings, ctx: PluginContext) -> PacketParser:
    """The registry's factory (retinad/plugins/registry.py)."""
    return PacketParser(settings, ctx)
