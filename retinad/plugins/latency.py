"""Handshake and request latency to targets: the user-space half of bpf/latency.h.

packetparser's tc programs measure in the kernel (see the header for what and how); this
module, driven by the packetparser plugin, does three things and nothing per packet:

- fills the kernel's target trie (``lat_targets``) from ``[[latency.targets]]`` and, in
  Kubernetes mode, the API server's addresses, so a target change needs no recompile;
- at scrape time, sweeps SYNs and requests pending longer than ``[latency]
  timeout_seconds`` out of ``lat_pending`` (each taken atomically, so it is counted once
  whether the sweep or a late answer gets it) and notes their sequence numbers in
  ``lat_expired`` so their retransmissions are not new attempts;
- reads the per-CPU histograms (``lat_hist``) into Prometheus histogram families.

Target ids index the histogram slots; a name keeps its id across target changes, and an
id given to a new name has its slots zeroed first.

The maps arrive as fds from the compile child (kernel/loader.py): they are read and
written with bpf(2) (kernel/bpf_syscall.py, kernel/maps.py), never through bcc, which the
daemon does not import.
"""

from __future__ import annotations

import ctypes
import ipaddress
import logging
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric

from retinad.config.schema import LatencySettings
from retinad.exporter.naming import Naming
from retinad.kernel import abi, bpf_syscall
from retinad.kernel.maps import BatchReader, MapHandle, possible_cpus

APISERVER = "apiserver"
"""The target name Retina's apiserver metrics are for (retina naming maps it)."""
MAP_LABELS = {"lat_pending": "latency_pending"}
"""BPF map name -> ``map`` label of retinad_map_entries/capacity."""

HANDSHAKE = "retinad_handshake_latency_seconds"
REQUEST = "retinad_request_latency_seconds"
NO_RESPONSE = "retinad_no_response"
RETINA_HANDSHAKE = "networkobservability_adv_node_apiserver_tcp_handshake_latency"
RETINA_REQUEST = "networkobservability_adv_node_apiserver_latency"
RETINA_NO_RESPONSE = "networkobservability_adv_node_apiserver_no_response"
DIRECTIONS = {abi.DIR_EGRESS: "egress", abi.DIR_INGRESS: "ingress"}
"""``direction`` label: egress = the endpoint opened the connection to the target,
ingress = the target opened it to the endpoint."""

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Target:
    """One trie entry: connections whose far end is in ``network`` with this server port."""

    name: str
    network: Network
    port: int = 0
    """0: any server port."""


def configured_targets(settings: LatencySettings) -> list[Target]:
    """``[[latency.targets]]`` as Targets (the loader has validated them)."""
    return [
        Target(t.name, ipaddress.ip_network(t.address, strict=True), t.port)
        for t in settings.targets
    ]


def trie_key(t: Target) -> abi.LatencyTargetKey:
    """The LPM key: port (network order) then the address, IPv4 as IPv4-mapped IPv6."""
    k = abi.LatencyTargetKey()
    net = t.network
    if isinstance(net, ipaddress.IPv4Network):
        addr = b"\0" * 10 + b"\xff\xff" + net.network_address.packed
        bits = 96 + net.prefixlen
    else:
        addr = net.network_address.packed
        bits = net.prefixlen
    k.prefixlen = 16 + bits
    k.port[0], k.port[1] = t.port >> 8, t.port & 0xFF
    ctypes.memmove(k.addr, addr, 16)
    return k


def knows_apiservers(resolver: object) -> bool:
    """The resolver that names the API servers (the kubernetes resolver's method)."""
    return callable(getattr(resolver, "apiserver_addresses", None))


def wanted(settings: LatencySettings, resolvers: Iterable[object]) -> bool:
    """Whether anything can be a target: configured ones, or the API servers (Kubernetes
    mode). If not, packetparser compiles latency out (RETINAD_LATENCY 0): no maps, no
    per-packet work. Both inputs change only on restart."""
    return bool(settings.targets) or any(knows_apiservers(r) for r in resolvers)


def bucket_bounds(unit: float) -> list[str]:
    """Upper bounds of the kernel's buckets as ``le`` strings, ``unit`` per nanosecond."""
    return [f"{e * unit:g}" for e in abi.LAT_EDGES_NS] + ["+Inf"]


class LatencyTracker:
    """The latency maps of one loaded packetparser program set."""

    def __init__(
        self, maps: Mapping[str, MapHandle], settings: LatencySettings, logger: logging.Logger
    ) -> None:
        """``maps``: the loaded packetparser object's maps by name (LoadedObject.maps);
        the tracker uses them, their owner closes them."""
        self._timeout_ns = settings.timeout_seconds * 1_000_000_000
        self._log = logger
        self._lock = threading.Lock()
        self._trie = maps["lat_targets"].fd
        self._hist = maps["lat_hist"].fd
        self._expired = maps["lat_expired"].fd
        self._config = maps["lat_config"].fd
        self._pending = BatchReader(
            maps["lat_pending"], abi.LatencyConnKey, abi.LatencyPending, percpu=False
        )
        self._ncpus = possible_cpus()
        self._configured = configured_targets(settings)
        self._apiservers: list[tuple[str, int]] | None = None
        self._ids: dict[str, int] = {}
        self._keys: set[bytes] = set()
        self._swept: Counter[tuple[int, int]] = Counter()
        """(target id, stage) -> attempts the sweep took as unanswered."""
        self._pending_entries = 0

    # --- targets ------------------------------------------------------------------------

    def set_targets(self, targets: Sequence[Target]) -> None:
        """Make the kernel's trie hold exactly ``targets`` (later duplicates ignored)."""
        with self._lock:
            names = list(dict.fromkeys(t.name for t in targets))
            for gone in [n for n in self._ids if n not in names]:
                del self._ids[gone]
            free = sorted(set(range(abi.LAT_MAX_TARGETS)) - set(self._ids.values()))
            for name in names:
                if name not in self._ids:
                    if not free:
                        self._log.warning("latency: more than %d target names; %r ignored",
                                          abi.LAT_MAX_TARGETS, name)  # fmt: skip
                        continue
                    self._ids[name] = tid = free.pop(0)
                    self._zero(tid)
            wanted: dict[bytes, int] = {}
            for t in targets:
                if t.name in self._ids:
                    wanted.setdefault(bytes(trie_key(t)), self._ids[t.name])
            for raw in self._keys - set(wanted):
                bpf_syscall.delete(self._trie, abi.LatencyTargetKey.from_buffer_copy(raw))
            for raw, tid in wanted.items():
                key = abi.LatencyTargetKey.from_buffer_copy(raw)
                bpf_syscall.update(self._trie, key, ctypes.c_uint32(tid))
            self._keys = set(wanted)
            bpf_syscall.update(self._config, ctypes.c_uint32(0), ctypes.c_uint32(len(wanted)))
        self._log.info("latency: %d targets, %d trie entries", len(self._ids), len(wanted))

    def set_configured(self, settings: LatencySettings) -> None:
        """New ``[[latency.targets]]`` on SIGHUP: the trie is refilled (the API servers, if
        followed, stay), with no recompile. A name kept keeps its histograms; a name
        dropped stops being measured and its series go."""
        self._configured = configured_targets(settings)
        api = [Target(APISERVER, ipaddress.ip_network(a), p) for a, p in self._apiservers or []]
        self.set_targets(self._configured + api)

    def start(self, resolvers: Iterable[object] = ()) -> None:
        """Fill the trie with the configured targets (and the API servers, if a resolver
        knows them)."""
        self.set_targets(self._configured)
        self.follow_resolvers(resolvers)

    def follow_resolvers(self, resolvers: Iterable[object]) -> None:
        """In Kubernetes mode the API servers are the target "apiserver", kept current
        from the resolver that knows them (``apiserver_addresses()``: the kubernetes
        resolver); without one, nothing changes."""
        known = [r for r in resolvers if knows_apiservers(r)]
        if known:
            self.follow_apiservers(a for r in known for a in r.apiserver_addresses())  # type: ignore[attr-defined]

    def follow_apiservers(self, addresses: Iterable[tuple[Any, int]]) -> None:
        """Make the API servers (address, port) the target "apiserver", next to the
        configured targets; a no-op while they are unchanged (called on each scrape)."""
        current = sorted({(str(a), int(p)) for a, p in addresses})
        if current == self._apiservers:
            return
        self._apiservers = current
        api = [Target(APISERVER, ipaddress.ip_network(a), p) for a, p in current]
        self.set_targets(self._configured + api)

    def target_names(self) -> dict[str, int]:
        """Target name -> id (histogram slot base), for tests and diagnostics."""
        with self._lock:
            return dict(self._ids)

    def _zero(self, tid: int) -> None:
        zero = (abi.LatencyHist * self._ncpus)()  # one value per possible CPU
        for stage in range(len(abi.LAT_STAGE_NAMES)):
            for d in DIRECTIONS:
                slot = ctypes.c_uint32(abi.latency_slot(tid, stage, d))
                bpf_syscall.update(self._hist, slot, zero)
        self._swept = Counter({k: v for k, v in self._swept.items() if k[0] != tid})

    # --- scrape ---------------------------------------------------------------------------

    def sweep(self) -> None:
        """Take every SYN/request pending longer than the timeout as one unanswered attempt."""
        now = time.monotonic_ns()  # the clock bpf_ktime_get_ns() reads
        with self._lock:
            entries = list(self._pending.read())
            self._pending_entries = len(entries)
            for key, value in entries:
                if key.stage == abi.LAT_STAGE_CONN or now - value.start_ns <= self._timeout_ns:
                    continue
                taken = self._pending.take(key)
                if taken is None:  # answered (or evicted) meanwhile: the kernel counted it
                    continue
                if now - taken.start_ns <= self._timeout_ns:  # a new attempt took the key
                    self._restore(key, taken)
                    continue
                self._swept[(taken.target, key.stage)] += 1
                self._pending_entries -= 1
                bpf_syscall.update(self._expired, key, ctypes.c_uint32(taken.seq))

    def _restore(self, key: abi.LatencyConnKey, value: abi.LatencyPending) -> None:
        try:
            bpf_syscall.update(self._pending.table.fd, key, value)
        except OSError as err:  # the map refused: the attempt simply goes unmeasured
            self._log.debug("latency: could not restore a pending entry: %s", err)

    def _read(self) -> dict[tuple[int, int, int], abi.LatencyHist]:
        """(target id, stage, direction) -> histogram summed over CPUs."""
        out = {}
        per_cpu = (abi.LatencyHist * self._ncpus)()  # 192 bytes: no per-CPU padding
        for tid in self._ids.values():
            for stage in range(len(abi.LAT_STAGE_NAMES)):
                for d in DIRECTIONS:
                    slot = ctypes.c_uint32(abi.latency_slot(tid, stage, d))
                    total = abi.LatencyHist()
                    if not bpf_syscall.lookup(self._hist, slot, per_cpu):
                        out[(tid, stage, d)] = total
                        continue
                    for v in per_cpu:
                        for b in range(abi.LAT_NBUCKETS):
                            total.buckets[b] += v.buckets[b]
                        total.sum_ns += v.sum_ns
                        total.no_response += v.no_response
                    out[(tid, stage, d)] = total
        return out

    def collect(self, naming: Naming, resolvers: Iterable[object] = ()) -> list[Metric]:
        """Follow the API servers, sweep, then the histograms and no-response counters."""
        self.follow_resolvers(resolvers)
        self.sweep()
        with self._lock:
            hists = self._read()
            names = {tid: name for name, tid in self._ids.items()}
            swept = dict(self._swept)
        return self._families(naming, hists, names, swept)

    def map_triples(self) -> list[tuple[str, int, int]]:
        """(map label, entries, capacity) for retinad_map_entries/capacity; entries of the
        pending map as the last sweep counted them."""
        with self._lock:
            cap = int(self._pending.table.max_entries)
            return [(MAP_LABELS["lat_pending"], self._pending_entries, cap)]

    @staticmethod
    def _families(
        naming: Naming,
        hists: dict[tuple[int, int, int], abi.LatencyHist],
        names: dict[int, str],
        swept: dict[tuple[int, int], int],
    ) -> list[Metric]:
        fams = empty_families(naming)
        by_name = {f.name: f for f in fams}
        no_response: Counter[tuple[str, int]] = Counter()
        # Retina's apiserver histograms have no labels: both directions add up.
        retina_buckets: dict[int, list[int]] = {}
        retina_sum: Counter[int] = Counter()
        for (tid, stage, d), h in sorted(hists.items()):
            name = names.get(tid)
            if name is None:
                continue
            no_response[(name, stage)] += h.no_response
            if naming == "retina" and name == APISERVER:
                acc = retina_buckets.setdefault(stage, [0] * abi.LAT_NBUCKETS)
                for b in range(abi.LAT_NBUCKETS):
                    acc[b] += h.buckets[b]
                retina_sum[stage] += h.sum_ns
                continue
            fam = by_name[(HANDSHAKE, REQUEST)[stage]]
            fam.add_metric(  # type: ignore[attr-defined]
                [name, DIRECTIONS[d]], _cumulative(list(h.buckets), 1e-9), h.sum_ns * 1e-9
            )
        for stage, acc in sorted(retina_buckets.items()):
            fam = by_name[(RETINA_HANDSHAKE, RETINA_REQUEST)[stage]]
            fam.add_metric([], _cumulative(acc, 1e-6), retina_sum[stage] * 1e-6)  # type: ignore[attr-defined]
        for (tid, stage), n in swept.items():
            if tid in names:
                no_response[(names[tid], stage)] += n
        for (name, stage), n in sorted(no_response.items()):
            if naming == "retina" and name == APISERVER:
                by_name[RETINA_NO_RESPONSE].add_metric([abi.LAT_STAGE_NAMES[stage]], n)  # type: ignore[attr-defined]
            else:
                by_name[NO_RESPONSE].add_metric([name, abi.LAT_STAGE_NAMES[stage]], n)  # type: ignore[attr-defined]
        return fams


def _cumulative(buckets: list[int], unit: float) -> list[tuple[str, float]]:
    """Kernel bucket counts (each its own) as Prometheus' cumulative (le, count) pairs."""
    out, n = [], 0
    for le, count in zip(bucket_bounds(unit), buckets, strict=True):
        n += count
        out.append((le, float(n)))
    return out


def empty_families(naming: Naming) -> list[Metric]:
    """The latency families without samples (describe, and the base of collect)."""
    fams: list[Metric] = [
        HistogramMetricFamily(
            HANDSHAKE,
            "TCP handshake time (SYN to SYN-ACK) of connections to or from a latency target.",
            labels=["target", "direction"],
        ),
        HistogramMetricFamily(
            REQUEST,
            "Time from a request's first payload segment to the first payload segment of "
            "the answer, on connections to or from a latency target.",
            labels=["target", "direction"],
        ),
        CounterMetricFamily(
            NO_RESPONSE,
            "SYNs and requests to a latency target unanswered within [latency] "
            "timeout_seconds, each attempt once.",
            labels=["target", "stage"],
        ),
    ]
    if naming == "retina":
        fams += [
            HistogramMetricFamily(
                RETINA_HANDSHAKE, "TCP handshake latency to the API server, in ms.", labels=[]
            ),
            HistogramMetricFamily(
                RETINA_REQUEST, "Request latency to the API server, in ms.", labels=[]
            ),
            GaugeMetricFamily(  # a gauge used as a counter, as naming.py's retina names
                RETINA_NO_RESPONSE,
                "SYNs and requests to the API server with no response.",
                labels=["no_response"],
            ),
        ]
    return fams
