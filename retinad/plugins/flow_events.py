"""Flow events: packetparser's kernel events to enriched flow records (docs/FLOWS.md).

Packetparser compiles its programs with ``kernel_defines`` and hands the loaded object to
``FlowEvents``, which runs three threads, none of which the main loop, the scrape path or
the watchdog ever waits for:

- the drain thread (kernel/ringbuf.py or kernel/perfbuf.py) copies each event into a
  bounded queue; when the queue is full the event is counted as lost at stage "queue";
- the writer thread takes the queue in batches, names both ends and the interface
  (flow_events_records.py) and writes JSON lines (flow_events_log.py) and to subscribers
  (``retinad flows``);
- in high aggregation the sweeper takes idle flows out of the connection table every
  report interval and reports what they still held (flow_events_table.py).

Loss is counted where it happens: the kernel counts failed reserves/outputs in fe_stats,
this module counts queue overflow; both are retinad_events_lost_total{stage}.
"""

from __future__ import annotations

import collections
import ctypes
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client.core import CounterMetricFamily
from prometheus_client.metrics_core import Metric

from retinad.config.schema import EventSettings
from retinad.exporter import naming
from retinad.kernel import abi
from retinad.kernel.features import event_transport
from retinad.kernel.maps import percpu_u64_sums
from retinad.kernel.perfbuf import PerfReader
from retinad.kernel.ringbuf import DrainThread, RingBufReader
from retinad.plugins.flow_events_log import RecordSink, open_sink
from retinad.plugins.flow_events_records import InterfaceNames, Record, RecordMaker
from retinad.plugins.flow_events_socket import FlowSocket
from retinad.plugins.flow_events_table import ConnTable

CONN_MAP_LABEL = "flow_events_connections"
"""Value of the ``map`` label on retinad_map_* for the connection table (fe_conn)."""
WRITER_PERIOD = 0.02
"""Seconds between two passes of the writer over the queue (it also wakes on stop)."""
EVENT_SIZE = ctypes.sizeof(abi.FlowEvent)

Subscriber = Callable[[list[Record]], None]


def kernel_defines(s: EventSettings) -> dict[str, int]:
    """The -D defines packetparser.c needs for these settings (none when disabled).

    The transport is resolved here (auto: by the ringbuf map probe), so a reload that
    lands on a different kernel answer recompiles."""
    if not s.enabled:
        return {}
    return {
        "RETINAD_FLOW_EVENTS": 1,
        "RETINAD_FE_TRANSPORT": abi.TRANSPORTS[event_transport(s.transport)],
        "RETINAD_FE_HIGH": int(s.aggregation_level == "high"),
        "RETINAD_FE_SAMPLING": s.data_sampling_rate,
        "RETINAD_FE_RING_PAGES": s.ring_pages,
        "RETINAD_FE_WAKEUP_EVERY": s.wakeup_events,
        "RETINAD_FE_REPORT_NS": s.report_interval_seconds * 1_000_000_000,
        "RETINAD_FE_CONN_ENTRIES": s.max_flows,
    }


def runtime_key(s: EventSettings) -> tuple[object, ...]:
    """The settings besides the defines that only a new reader applies (all but the log,
    which ``set_log`` switches in place)."""
    if not s.enabled:
        return ()
    return (s.perf_pages, s.drain_interval_ms, s.queue_size, s.socket)


def transport_of(defines: Mapping[str, int]) -> str:
    return "ringbuf" if defines["RETINAD_FE_TRANSPORT"] == abi.FE_RINGBUF else "perf"


class FlowEvents:
    """The user-space half of flow events for one loaded packetparser object."""

    def __init__(
        self,
        settings: EventSettings,
        defines: Mapping[str, int],
        obj: Any,
        *,
        resolver: Any,
        interfaces: InterfaceNames,
        logger: logging.Logger,
    ) -> None:
        self.settings = settings
        self.transport = transport_of(defines)
        self._obj = obj
        self._log = logger
        self._high = settings.aggregation_level == "high"
        self._maker = RecordMaker(resolver, interfaces, settings.aggregation_level)
        self._queue: collections.deque[bytes | abi.FlowEvent] = collections.deque()
        self._cap = settings.queue_size
        self.queue_lost = 0
        self.records_written = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._sink: RecordSink | None = None
        self.socket: FlowSocket | None = None
        self._sink_lock = threading.Lock()
        self._subscribers: list[Subscriber] = []
        self._sub_lock = threading.Lock()
        self._table = ConnTable(obj[b"fe_conn"]) if self._high else None
        self._reader = self._make_reader()

    def _make_reader(self) -> DrainThread:
        drain = self.settings.drain_interval_ms / 1000
        if self.transport == "ringbuf":
            return RingBufReader(self._obj[b"fe_ring"].get_fd(), self._enqueue, drain)
        return PerfReader(self._obj[b"fe_perf"].get_fd(), self._enqueue,
                          page_cnt=self.settings.perf_pages,
                          wakeup_events=self.settings.wakeup_events,
                          drain_interval=drain)  # fmt: skip

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        log = self.settings.log
        self._sink = open_sink(log.path, log.max_size_mib, log.max_files)
        if self.settings.socket:
            self.socket = FlowSocket(self.settings.socket, self._log)
            self.socket.start(self.subscribe)
        self._reader.start()
        self._spawn("flow-writer", self._write_loop)
        if self._high:
            self._spawn("flow-sweep", self._sweep_loop)
        self._log.info(
            "flow events: %s, %s aggregation, 1 in %d sampled, log %s", self.transport,
            self.settings.aggregation_level, self.settings.data_sampling_rate,
            log.path or "off",
        )  # fmt: skip

    def _spawn(self, name: str, fn: Callable[[], None]) -> None:
        t = threading.Thread(target=fn, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def stop(self) -> None:
        """Call after the programs are detached: every flow still in the table is
        reported (reason ``flush``) and every queued record written before this returns."""
        self._reader.close()
        if self._table is not None:
            try:
                self._queue.extend(self._table.take_idle(0))
            except OSError as err:
                self._log.warning("flow events: flushing the connection table: %s", err)
        self._stop.set()
        for t in self._threads:
            t.join()
        self._threads.clear()
        self._write_pending()
        if self.socket is not None:
            self.socket.stop()
            self.socket = None
        if self._sink is not None:
            self._sink.close()
            self._sink = None

    def set_log(self, settings: EventSettings) -> None:
        """SIGHUP with only [packetparser.events.log] changed: switch sinks between two
        batches, nothing recompiled; refuses (raises OSError) if the new file cannot open."""
        log = settings.log
        new = open_sink(log.path, log.max_size_mib, log.max_files)
        with self._sink_lock:
            old, self._sink = self._sink, new
            self.settings = settings
        if old is not None:
            old.close()

    @property
    def alive(self) -> bool:
        return self._reader.alive and all(t.is_alive() for t in self._threads)

    def subscribe(self, fn: Subscriber) -> Callable[[], None]:
        """Also hand every batch of records to ``fn`` (in the writer thread; it must not
        block). Returns the function that unsubscribes."""
        with self._sub_lock:
            self._subscribers.append(fn)

        def unsubscribe() -> None:
            with self._sub_lock:
                if fn in self._subscribers:
                    self._subscribers.remove(fn)

        return unsubscribe

    # --- the three paths --------------------------------------------------------------------

    def _enqueue(self, data: bytes) -> None:
        """In the drain thread, once per event: keep it short."""
        if len(self._queue) >= self._cap:
            self.queue_lost += 1
            return
        self._queue.append(data)

    def _write_loop(self) -> None:
        while not self._stop.wait(WRITER_PERIOD):
            self._write_pending()

    def _write_pending(self) -> None:
        q = self._queue
        events: list[abi.FlowEvent] = []
        while q:
            item = q.popleft()
            if isinstance(item, bytes):
                item = abi.FlowEvent.from_buffer_copy(item[:EVENT_SIZE])
            events.append(item)
        if not events:
            return
        records = self._maker.make_batch(events)
        with self._sink_lock:
            if self._sink is not None:
                try:
                    self._sink.write(records)
                except OSError as err:
                    self._log.error("flow log: %s (records dropped)", err)
        with self._sub_lock:
            subscribers = list(self._subscribers)
        for fn in subscribers:
            try:
                fn(records)
            except Exception:
                self._log.exception("flow events: subscriber failed")
        self.records_written += len(records)

    def _sweep_loop(self) -> None:
        assert self._table is not None
        idle_ns = self.settings.report_interval_seconds * 1_000_000_000
        while not self._stop.wait(self.settings.report_interval_seconds):
            try:
                self._queue.extend(self._table.take_idle(idle_ns))
            except OSError as err:
                self._log.warning("flow events: sweeping the connection table: %s", err)

    # --- metrics ------------------------------------------------------------------------

    def kernel_stats(self) -> list[int]:
        return percpu_u64_sums(self._obj[b"fe_stats"], abi.FE_NSTATS)

    def map_triples(self) -> list[tuple[str, int, int]]:
        """(map label, entries, capacity) of the connection table, for retinad_map_*."""
        if self._table is None:
            return []
        return [(CONN_MAP_LABEL, self._table.entries(), self._table.capacity)]

    def metrics(self) -> list[Metric]:
        stats = self.kernel_stats()
        return families(self.transport, self._reader.records, stats[abi.FE_STAT_LOST],
                        self.queue_lost, stats[abi.FE_STAT_SAMPLED])  # fmt: skip


def families(
    transport: str | None, events: int, kernel_lost: int, queue_lost: int, sampled: int
) -> list[Metric]:
    """retinad_events_total{transport}, retinad_events_lost_total{stage} and
    retinad_events_sampled_out_total; empty families when events are off."""
    total = CounterMetricFamily(
        naming.EVENTS, "Flow events read from the kernel, by transport.", labels=["transport"]
    )
    lost = CounterMetricFamily(
        naming.EVENTS_LOST,
        "Flow events lost: kernel = the ring or perf buffer was full, queue = the writer "
        "fell behind the reader.",
        labels=["stage"],
    )
    sampled_out = CounterMetricFamily(
        naming.EVENTS_SAMPLED_OUT,
        "Packets (low aggregation) or flows (high) not reported because of data_sampling_rate.",
    )
    if transport is not None:
        total.add_metric([transport], events)
        lost.add_metric(["kernel"], kernel_lost)
        lost.add_metric(["queue"], queue_lost)
        sampled_out.add_metric([], sampled)
    return [total, lost, sampled_out]


def describe_families() -> Iterable[Metric]:
    return families(None, 0, 0, 0, 0)
