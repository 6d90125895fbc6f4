"""The packetparser plugin: tc programs counting TCP/UDP per interface and per endpoint.

Lifecycle: ``start`` compiles bpf/packetparser.c with the settings as -D defines, loads its
six programs and inserts each map's overflow keys; the interface side is
packetparser_links.py (InterfaceReconciler: netlink link events -> selection -> attach,
attach failures counted in retinad_attach_errors_total{reason}, never fatal). This module
keeps the collection side: ``collect`` batch-reads the maps at scrape time
(kernel/maps.py), names endpoint keys and runs them through the series ledgers
(packetparser_metrics.py, exporter/ledger.py): a scrape costs a few syscalls per map,
whatever the packet rate, and nothing runs per packet in user space.
"""

from __future__ import annotations

import ctypes
import dataclasses
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import CounterMetricFamily
from prometheus_client.metrics_core import Metric

from retinad.config.schema import LatencySettings, MetricsSettings, PacketParserSettings
from retinad.errors import PluginError, RetinadError
from retinad.exporter import naming
from retinad.exporter.ledger import Labels, Record, SeriesLedger, Values
from retinad.exporter.naming import series_dropped
from retinad.kernel import abi
from retinad.kernel.attach import Program, make_attacher
from retinad.kernel.interfaces import LinkInfo, Role
from retinad.kernel.loader import PROG_SCHED_CLS, LoadedObject
from retinad.kernel.loader import load as load_program
from retinad.kernel.maps import BatchReader, percpu_u64_sums
from retinad.plugins import latency
from retinad.plugins.base import PluginContext
from retinad.plugins.flow_events import (
    FlowEvents,
    describe_families,
    kernel_defines,
    runtime_key,
)
from retinad.plugins.packetparser_links import (
    PROGRAM_NAMES,
    InterfaceReconciler,
    attach_families,
)
from retinad.plugins.packetparser_metrics import (
    Reading,
    basic_families,
    direction_label,
    endpoint_families,
    endpoint_overflow,
    endpoint_records,
    note_container_addresses,
    overflow_packets,
    pair_families,
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
UNPARSED = "retinad_packets_unparsed"
CAP_WARNING_INTERVAL = 300.0
"""Seconds between two warnings that max_endpoint_series was reached."""
"""Each map holds one overflow key per direction on top of its configured capacity."""

MAP_LABELS = {
    "pp_iface": "packetparser_interface",
    "pp_endpoint": "packetparser_endpoint",
    "pp_remote": "packetparser_remote",
}
"""BPF map name -> value of the ``map`` label on retinad_map_* series."""

_Totals = dict[str, dict[Labels, Values]]
"""Ledger totals per BPF map name."""


@dataclass(frozen=True)
class _KernelConfig:
    """The settings compiled into the programs; changing any of them means a reload."""

    advanced: bool
    remote: bool
    max_endpoints: int
    max_remote_flows: int
    attach_mode: str
    latency: bool
    latency_timeout_seconds: int
    latency_pending: int
    events: tuple[tuple[str, int], ...] = ()
    """Flow-event -D defines (plugins/flow_events.py); empty when events are off."""
    events_runtime: tuple[object, ...] = ()
    """The reader's settings (plugins/flow_events.runtime_key): a change restarts it."""

    @classmethod
    def of(cls, s: PacketParserSettings, ctx: PluginContext) -> _KernelConfig:
        m, lat = ctx.metrics, ctx.latency
        advanced = m.mode == "advanced"
        events = tuple(sorted(kernel_defines(s.events).items()))
        return cls(advanced, advanced and s.remote_context, s.max_endpoints,
                   s.max_remote_flows, s.attach_mode,
                   latency.wanted(lat, ctx.resolver.resolvers), lat.timeout_seconds,
                   lat.max_pending, events, runtime_key(s.events))  # fmt: skip


class PacketParser:
    """The plugin object the daemon drives (see retinad/plugins/base.py)."""

    def __init__(self, settings: PacketParserSettings, ctx: PluginContext) -> None:
        self.settings = settings
        self.ctx = ctx
        self._log = ctx.logger
        self._lock = threading.RLock()
        self._read_lock = threading.Lock()
        self._bpf: Any = None
        self._precompiled: tuple[_KernelConfig, LoadedObject] | None = None
        self._programs: dict[str, Program] = {}
        self._readers: dict[str, BatchReader[Any, abi.TrafficValue]] = {}
        self._links: InterfaceReconciler | None = None
        self._kernel: _KernelConfig | None = None
        self._ledgers: dict[str, SeriesLedger] = {}
        self._sweeper: Sweeper | None = None
        self._cap_warned_at: dict[str, float] = {}
        self._latency: latency.LatencyTracker | None = None
        self._events: FlowEvents | None = None

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        kc = _KernelConfig.of(self.settings, self.ctx)
        try:
            attacher = make_attacher(self.settings.attach_mode)
            self._load(kc)
            self._kernel = kc
            self._links = InterfaceReconciler(self.settings, attacher, self._programs, self._log)
            self._links.start()
            if kc.events:
                self._start_events(kc)
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
        if self._sweeper is not None:
            self._sweeper.stop()
            self._sweeper = None
        if self._links is not None:
            self._links.stop()
        if self._events is not None:  # after detaching: the table flush is then complete
            self._events.stop()
            self._events = None
        with self._read_lock:
            self._latency = None
            self._readers.clear()
            self._ledgers.clear()
            self._programs.clear()
            if self._bpf is not None:
                self._bpf.cleanup()
                self._bpf = None
        self._kernel = None

    def set_latency_targets(self, settings: LatencySettings) -> bool:
        """Apply new ``[[latency.targets]]`` to the running programs' target map (no
        recompile). False, changing nothing, when that cannot be: latency is compiled out
        (no target and no resolver that knows the API servers when the programs were
        built), or the timeout or the pending map's size changed (both compiled in)."""
        old = self.ctx.latency
        tracker = self._latency
        if tracker is None or (settings.timeout_seconds, settings.max_pending) != (
            old.timeout_seconds,
            old.max_pending,
        ):
            return False
        if not latency.wanted(settings, self.ctx.resolver.resolvers):
            return False  # no target left: the compiled-in work would measure nothing
        tracker.set_configured(settings)
        with self._lock:
            self.ctx = dataclasses.replace(self.ctx, latency=settings)
        return True

    def reload(self, settings: PacketParserSettings, metrics: MetricsSettings) -> None:
        """Re-select interfaces; recompile only when a compiled-in setting changed."""
        old_settings, old_ctx = self.settings, self.ctx
        new_ctx = dataclasses.replace(self.ctx, metrics=metrics)
        if _KernelConfig.of(settings, new_ctx) == self._kernel:
            if metrics != old_ctx.metrics:  # label shapes changed: bind keys afresh
                with self._read_lock:
                    self._ledgers = {n: self._new_ledger(n, metrics) for n in self._ledgers}
            if self._events is not None and settings.events.log != old_settings.events.log:
                self._events.set_log(settings.events)
            with self._lock:
                self.settings, self.ctx = settings, new_ctx
            if self._links is not None:
                self._links.reselect(settings)
            self._log.info("reloaded: %s", self.status())
            return
        self._log.info("reload changes compiled-in settings: reloading the programs")
        new_kc = _KernelConfig.of(settings, new_ctx)
        try:  # compile first (a new child): a failure leaves the running programs alone
            self._precompiled = (new_kc, self._compile(new_kc))
        except RetinadError as err:
            # Refused, not applied: the daemon keeps the old settings as what runs, so the
            # next SIGHUP tries the new ones again.
            raise PluginError(
                f"packetparser: new settings refused (their programs did not compile), the "
                f"running programs keep counting: {err}"
            ) from err
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
        events = self._events is None or self._events.alive
        return self._links is not None and self._links.alive and sweeping and events

    def status(self) -> str:
        if self._links is None:
            return "attached to 0 interfaces (none)"
        return self._links.status()

    # --- loading ----------------------------------------------------------------------------

    def _compile(self, kc: _KernelConfig) -> LoadedObject:
        """Compile and load the programs in a child (kernel/loader.py); nothing attached."""
        defines: dict[str, int | str] = {
            "RETINAD_ADVANCED": int(kc.advanced),
            "RETINAD_REMOTE_CONTEXT": int(kc.remote),
            "RETINAD_IFACE_ENTRIES": IFACE_KEYS + OVERFLOW_SLOTS,
            "RETINAD_ENDPOINT_ENTRIES": kc.max_endpoints + OVERFLOW_SLOTS,
            "RETINAD_REMOTE_ENTRIES": kc.max_remote_flows + OVERFLOW_SLOTS,
            "RETINAD_LATENCY": int(kc.latency),
            "RETINAD_LAT_TIMEOUT_NS": f"{kc.latency_timeout_seconds * 1_000_000_000}ULL",
            "RETINAD_LAT_PENDING_ENTRIES": kc.latency_pending,
            **dict(kc.events),
        }
        wanted = dict.fromkeys(PROGRAM_NAMES, PROG_SCHED_CLS)
        return load_program(self.ctx.bpf_dir.resolve(), SOURCE, defines, wanted)

    def _load(self, kc: _KernelConfig) -> None:
        pre, self._precompiled = self._precompiled, None
        if pre is not None and pre[0] != kc:
            pre[1].cleanup()  # compiled for a reload that was abandoned
            pre = None
        self._bpf = pre[1] if pre is not None else self._compile(kc)
        for name in PROGRAM_NAMES:
            try:
                fn = self._bpf.load_func(name.encode(), PROG_SCHED_CLS)
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
            if kc.latency:
                self._latency = latency.LatencyTracker(self._bpf.maps, self.ctx.latency, self._log)
                self._latency.start(self.ctx.resolver.resolvers)

    def _new_ledger(self, name: str, metrics: MetricsSettings) -> SeriesLedger:
        reader = self._readers[name]

        def take(key: bytes) -> Values | None:
            value = reader.take(reader.key_type.from_buffer_copy(key))
            return None if value is None else traffic_values(value)

        overflow = endpoint_overflow if name == "pp_endpoint" else remote_overflow
        with_flags = name == "pp_endpoint" or self._pair_shape(metrics)
        return SeriesLedger(
            width=2 + abi.TCP_NFLAGS,
            grace=float(self.ctx.series.grace_period_seconds),
            cap=self.ctx.series.max_endpoint_series,
            overflow=overflow(metrics),
            take=take,
            # worst case per label set: packets, bytes and (endpoint map, and the pair map
            # in Retina's remote-context shape) every TCP flag
            series_per_labels=2 + (abi.TCP_NFLAGS if with_flags else 0),
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

    def _start_events(self, kc: _KernelConfig) -> None:
        """Flow events on: hand the loaded maps to plugins/flow_events.py."""

        def interfaces() -> dict[int, tuple[str, str]]:
            return {i: (name, role.value) for i, (name, role) in self.attached().items()}

        self._events = FlowEvents(self.settings.events, dict(kc.events), self._bpf,
                                  resolver=self.ctx.resolver, interfaces=interfaces,
                                  logger=self._log)  # fmt: skip
        self._events.start()

    def flow_events(self) -> FlowEvents | None:
        """The running flow-event pipeline (``retinad flows`` subscribes to it)."""
        return self._events

    # --- metrics ------------------------------------------------------------------------

    def _account(self) -> tuple[dict[str, list[tuple[Any, abi.TrafficValue]]], _Totals]:
        """Read every map and pass the named endpoint keys through the ledgers.

        One lock around read and ledger update: the sweeper and concurrent scrapes must not
        interleave, or a key taken by one pass would look vanished to the other.
        """
        metrics = self.ctx.metrics
        links = self._links
        containers = links.container_ifindexes() if links is not None else frozenset()
        with self._read_lock:
            data = {name: list(r.read()) for name, r in self._readers.items()}
            reading = Reading(
                iface=data.get("pp_iface", []),
                endpoint=data.get("pp_endpoint"),
                remote=data.get("pp_remote"),
                container_ifindexes=containers,
            )
            totals: _Totals = {}
            if self._ledgers:
                note_container_addresses(reading, self.ctx.resolver)
            for name, ledger in self._ledgers.items():
                named = endpoint_records if name == "pp_endpoint" else remote_records
                records: list[Record] = named(reading, self.ctx.resolver, metrics)
                dropped = ledger.dropped
                totals[name] = ledger.update(records)
                if ledger.dropped > dropped:
                    self._warn_cap(name, ledger)
        return data, totals

    def _warn_cap(self, name: str, ledger: SeriesLedger) -> None:
        now = time.monotonic()
        if now - self._cap_warned_at.get(name, -CAP_WARNING_INTERVAL) < CAP_WARNING_INTERVAL:
            return
        self._cap_warned_at[name] = now
        self._log.warning(
            "map %s: [resolvers] max_endpoint_series = %d reached; new endpoints are counted "
            "under the overflow endpoint (%d refused so far; next warning in %d s at most)",
            MAP_LABELS[name], ledger.cap, ledger.dropped, int(CAP_WARNING_INTERVAL),
        )  # fmt: skip

    def _unparsed(self) -> Metric:
        """retinad_packets_unparsed_total{reason, role, direction} from pp_unparsed."""
        fam = CounterMetricFamily(
            UNPARSED,
            "Frames packetparser saw but could not count, by reason, interface role and "
            "direction (see METRICS.md for the reasons).",
            labels=["reason", "role", "direction"],
        )
        with self._read_lock:
            table = self._bpf[b"pp_unparsed"] if self._bpf is not None else None
            counts = [0] * abi.UNPARSED_SLOTS
            if table is not None:
                counts = percpu_u64_sums(table, abi.UNPARSED_SLOTS)
        for r, reason in enumerate(abi.UNPARSED_REASONS):
            for role in (Role.HOST, Role.CONTAINER):
                for d in (abi.DIR_INGRESS, abi.DIR_EGRESS):
                    # the direction counted, from the endpoint's point of view
                    n = counts[abi.unparsed_slot(r, role is Role.HOST, d)]
                    fam.add_metric([reason, role.value, direction_label(d)], n)
        return fam

    def collect(self) -> Iterable[Metric]:
        data, totals = self._account()
        metrics = self.ctx.metrics
        yield from basic_families(Reading(iface=data.get("pp_iface", [])), metrics)
        if "pp_endpoint" in totals and not self._pair_shape(metrics):
            yield from endpoint_families(totals["pp_endpoint"], metrics)
        if "pp_remote" in totals:
            yield from remote_families(totals["pp_remote"], metrics)
        with self._read_lock:
            tracker = self._latency
            lat = tracker.collect(metrics.naming, self.ctx.resolver.resolvers) if tracker else []
        yield from lat
        yield from self._self_metrics(data)

    def _self_metrics(self, data: dict[str, list[tuple[Any, abi.TrafficValue]]]) -> list[Metric]:
        triples = [
            (MAP_LABELS[name], len(data[name]), int(r.table.max_entries))
            for name, r in self._readers.items()
            if name in data
        ]
        if self._latency is not None:
            triples += self._latency.map_triples()
        if self._events is not None:
            triples += self._events.map_triples()
        out = naming.map_gauges(triples)
        out.append(overflow_packets((MAP_LABELS[n], recs) for n, recs in data.items()))
        out.append(self._unparsed())
        out.append(series_dropped((MAP_LABELS[n], lg.dropped) for n, lg in self._ledgers.items()))
        out.extend(self._links.metrics() if self._links else attach_families({}, []))
        out.extend(self._events.metrics() if self._events else describe_families())
        return out

    def describe(self) -> Iterable[Metric]:
        m = self.ctx.metrics
        specs = [naming.FORWARD_PACKETS, naming.FORWARD_BYTES, naming.TCP_FLAGS]
        pairs: list[Metric] = []
        if m.mode == "advanced" and self._pair_shape(m):
            pairs = pair_families({})
        elif m.mode == "advanced":
            specs += [
                naming.ENDPOINT_FORWARD_PACKETS,
                naming.ENDPOINT_FORWARD_BYTES,
                naming.ENDPOINT_TCP_FLAGS,
            ]
            if self.settings.remote_context:
                specs += [naming.REMOTE_FORWARD_PACKETS, naming.REMOTE_FORWARD_BYTES]
        fams = [s.family(m.naming, ip_label=m.ip_label) for s in specs] + pairs
        fams += latency.empty_families(m.naming)
        fams += naming.map_gauges([])
        fams.append(overflow_packets([]))
        fams.append(self._unparsed())
        fams.append(series_dropped([]))
        fams += self._links.metrics() if self._links else attach_families({}, [])
        fams += describe_families()
        return fams

    def _pair_shape(self, metrics: MetricsSettings) -> bool:
        """Retina's remote-context shape: the pair map feeds the forward and flag names."""
        return naming.retina_pair_shape(metrics.naming, remote_context=self.settings.remote_context)

    # --- for tests and diagnostics ----------------------------------------------------------

    def attached(self) -> dict[int, tuple[str, Role]]:
        """ifindex -> (interface name, role) of the current attachments."""
        return self._links.attached() if self._links else {}

    def attach_errors(self) -> dict[str, int]:
        return self._links.attach_errors() if self._links else {}

    def on_link(self, link: LinkInfo) -> None:
        """Hand one link event to the reconciler (the test seam: see InterfaceReconciler)."""
        if self._links is not None:
            self._links.on_link(link)

    def ledger_stats(self) -> dict[str, LedgerStats]:
        """Per map label (``packetparser_endpoint``, ``packetparser_remote``): what its
        series ledger holds now (advanced mode; empty in basic mode)."""
        with self._read_lock:
            return {
                MAP_LABELS[name]: LedgerStats(
                    series=lg.series_count(),
                    bound_keys=lg.bound_keys(),
                    evicted=lg.evicted,
                    dropped=lg.dropped,
                )
                for name, lg in self._ledgers.items()
            }


@dataclass(frozen=True)
class LedgerStats:
    """A snapshot of one SeriesLedger (exporter/ledger.py), for tests and diagnostics."""

    series: int
    """Label sets exported."""
    bound_keys: int
    """Kernel map keys bound to a label set (UNCOUNTED ones included)."""
    evicted: int
    """Keys the ledger took out of the map (owner changed, or unknown and idle)."""
    dropped: int
    """Label sets refused by the cap."""


def create(settings: PacketParserSettings, ctx: PluginContext) -> PacketParser:
    """The registry's factory (retinad/plugins/registry.py)."""
    return PacketParser(settings, ctx)
