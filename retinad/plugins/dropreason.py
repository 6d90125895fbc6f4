"""The dropreason plugin: packets and bytes the kernel drops, by its own drop reason.

Source: tracepoint skb:kfree_skb with its ``reason`` field (5.17+), counted in kernel into
a per-CPU hash (bpf/dropreason.c) and read in batches at scrape time. Names come from the
running kernel's BTF (retinad.kernel.dropreasons); so do the struct sk_buff offsets the
program reads, because bcc compiles against whatever headers are installed.

Retina's own hooks (kprobes on nf_hook_slow, nf_nat_inet_fn, tcp_v4_connect,
inet_csk_accept, __nf_conntrack_confirm) are the fallback source
(retinad/plugins/dropreason_hooks.py), chosen by retinad.kernel.features.dropreason_source
where the tracepoint has no reason field or by ``source = "hooks"``; where both exist the
tracepoint wins (it sees every one of those drops with a finer reason, and adds no probe to
netfilter's per-packet path). Both fill the same map, so everything below is shared.

Collection: one batch read per scrape; the basic series sum over every address and
protocol; advanced mode adds per-endpoint series named by the resolver. When the map is
full, new keys count into one overflow key (reason "MAP_OVERFLOW", the overflow endpoint)
and retinad_map_overflow_packets_total{map="drop_counts"} rises.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from retinad.config.schema import DropReasonSettings, MetricsSettings
from retinad.errors import AttachError, KernelError, PluginError
from retinad.exporter import naming
from retinad.exporter.ledger import Labels, Record, SeriesLedger, Values
from retinad.kernel import bpf_syscall
from retinad.kernel.abi import (
    FAMILY_IPV4,
    FAMILY_IPV6,
    FAMILY_OVERFLOW,
    DropKey,
    DropValue,
    decode_addr,
)
from retinad.kernel.btf import VMLINUX_BTF, Btf
from retinad.kernel.dropreasons import CONSUMED, NOT_DROPPED_YET, DropReasonNames
from retinad.kernel.features import PRIVILEGE_FIX, DropSource, dropreason_source, tracefs_denied
from retinad.kernel.loader import PROG_TRACEPOINT
from retinad.kernel.loader import load as load_program
from retinad.kernel.maps import BatchReader, map_fd, possible_cpus
from retinad.kernel.tracepoint import tracepoint_exists
from retinad.model import OVERFLOW_ENDPOINT, UNKNOWN_ENDPOINT, Direction, Endpoint
from retinad.plugins import dropreason_btf, dropreason_hooks
from retinad.plugins.base import PluginContext
from retinad.plugins.sweeper import Sweeper
from retinad.resolvers.base import ResolverChain

SOURCE = "bpf/dropreason.c"
TRACEPOINT = "skb:kfree_skb"
TRACEPOINT_STRUCT = "trace_event_raw_kfree_skb"
"""The tracepoint's record as BTF describes it: tells whether ``reason``/``rx_sk`` exist."""
MAP_NAME = "drop_counts"
OVERFLOW_REASON = "MAP_OVERFLOW"
"""Reason label of counts that found the map full (their own reason could not be kept)."""
MODULE_BTF_DIR = Path("/sys/kernel/btf")
KPROBE_EVENTS = (
    Path("/sys/kernel/tracing/kprobe_events"),
    Path("/sys/kernel/debug/tracing/kprobe_events"),
)

Family = CounterMetricFamily | GaugeMetricFamily
"""What MetricSpec.family() returns, by naming."""

SKB_FIELDS: dict[str, int] = {
    "head": 8,
    "data": 8,
    "network_header": 2,
    "len": 4,
    "skb_iif": 4,
    "sk": 8,
}
"""struct sk_buff members the program reads, with the size it reads them as."""


def kprobes_available(paths: Iterable[Path] = KPROBE_EVENTS) -> bool:
    """Whether this kernel has kprobes: tracefs shows kprobe_events only with CONFIG_KPROBES."""
    return any(p.exists() for p in paths)


def kernel_defines(btf: Btf, names: DropReasonNames) -> dict[str, int]:
    """The -D defines bpf/dropreason.c needs from this kernel, all read from BTF.

    Raises KernelError naming what is missing (no reason field before 5.17, a struct
    sk_buff member gone or resized).
    """
    if btf.member(TRACEPOINT_STRUCT, "reason") is None:
        raise KernelError(
            f"{btf.source}: struct {TRACEPOINT_STRUCT} has no 'reason' field: tracepoint "
            f"{TRACEPOINT} reports drop reasons from kernel 5.17 on"
        )
    defines: dict[str, int] = {
        "RETINAD_HAS_RX_SK": int(btf.member(TRACEPOINT_STRUCT, "rx_sk") is not None),
        **skb_offsets(btf),
    }
    for name in (NOT_DROPPED_YET, CONSUMED):
        value = names.value(name)
        defines[f"RETINAD_REASON_{name}"] = -1 if value is None else value
    return defines


def skb_offsets(btf: Btf) -> dict[str, int]:
    """RETINAD_SKB_OFF_* for the SKB_FIELDS, from BTF (both sources read them)."""
    defines: dict[str, int] = {}
    for field, size in SKB_FIELDS.items():
        m = btf.member("sk_buff", field)
        if m is None or m.size != size:
            got = "absent" if m is None else f"{m.size} bytes"
            raise KernelError(f"{btf.source}: struct sk_buff.{field}: expected {size} bytes, {got}")
        defines[f"RETINAD_SKB_OFF_{field.upper()}"] = m.offset
    return defines


@dataclass
class _Program:
    """One compiled, attached program and what reads its map."""

    bpf: Any
    reader: BatchReader[DropKey, DropValue]
    capacity: int
    advanced: bool
    ledger: SeriesLedger | None = None
    """Advanced mode: binds keys to endpoints (exporter/ledger.py); its coarse totals
    give the node-level series, so freeing a key never lowers them."""
    first_seen: dict[bytes, int] = dataclasses.field(default_factory=dict)
    """Advanced mode: key -> ResolverChain.container_address_reads when the key was first
    read; see ``_named_once_behind_known``."""


class DropReasonPlugin:
    """Counts kernel packet drops by reason and direction (and endpoint, in advanced mode)."""

    def __init__(
        self,
        settings: DropReasonSettings,
        ctx: PluginContext,
        *,
        btf_path: Path = VMLINUX_BTF,
        module_btf_dir: Path = MODULE_BTF_DIR,
    ) -> None:
        self._settings = settings
        self._metrics = ctx.metrics
        self._ctx = ctx
        self._btf_path = btf_path
        self._module_btf_dir = module_btf_dir
        self._log = ctx.logger
        self._names: DropReasonNames | None = None
        self._defines: dict[str, int] = {}
        self._prog: _Program | None = None
        self._lock = threading.Lock()
        self._sweeper: Sweeper | None = None
        self._source = DropSource("none", "not started")
        self._hooked: dropreason_hooks.Attached | None = None

    @property
    def names(self) -> DropReasonNames:
        """The running kernel's reason names (after start)."""
        if self._names is None:
            raise RuntimeError("dropreason: names are read in start()")
        return self._names

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        try:
            self._source = dropreason_source(self._settings.source)
            if self._source.kind == "none":
                raise KernelError(self._source.why)
            # In a child: the parse's peak and residue stay out of the daemon (why: there).
            hooks = self._source.kind == "hooks"
            self._names, self._defines = dropreason_btf.read(
                self._btf_path, self._module_btf_dir, hooks=hooks
            )
            self._prog = self._build(self._settings, self._metrics)
        except KernelError as err:
            raise PluginError(f"dropreason: {err}") from err
        self._sweeper = Sweeper(
            self._ctx.resolver, self._account, logger=self._log, name="dropreason-sweep"
        )
        self._sweeper.start()
        if self._hooked is not None:
            self._log.info("dropreason: source %s; %s", self._source.why, self._hooked.describe())
            return
        source = "kprobes present but unused" if kprobes_available() else "no kprobes"
        self._log.info(
            "dropreason: source tracepoint %s (%s; rx_sk %s), %d reasons from %s",
            TRACEPOINT,
            source,
            "yes" if self._defines["RETINAD_HAS_RX_SK"] else "no",
            self._names.reason_count,
            self._btf_path,
        )

    def _build(self, settings: DropReasonSettings, metrics: MetricsSettings) -> _Program:
        """Compile, create the overflow key, then attach: counts never find no overflow key."""
        advanced = metrics.mode == "advanced"
        if self._source.kind == "hooks":
            defines = {**self._defines, "RETINAD_ADVANCED": int(advanced)}
            defines["RETINAD_MAX_ENTRIES"] = settings.max_entries
            bpf, self._hooked = dropreason_hooks.build(
                self._ctx.bpf_dir,
                defines,
                lambda b: _insert_overflow_key(b.get_table(MAP_NAME)),
                self._log,
            )
            return self._program(bpf, settings, metrics)
        if not tracepoint_exists("skb", "kfree_skb"):
            denied = tracefs_denied()
            if denied is not None:  # bcc reads tracefs as a file: "not found" hides EACCES
                raise AttachError(
                    f"tracepoint {TRACEPOINT}: {denied}: permission denied: privileges "
                    "missing (tracefs is root's, mode 0700; another uid needs "
                    f"CAP_DAC_READ_SEARCH); {PRIVILEGE_FIX}",
                    reason="permission",
                )
            raise AttachError(
                f"tracepoint {TRACEPOINT} not found under /sys/kernel/tracing/events "
                "(is tracefs mounted?)",
                reason="no_tracepoint",
            )
        defines = dict(self._defines)
        defines["RETINAD_ADVANCED"] = int(advanced)
        defines["RETINAD_MAX_ENTRIES"] = settings.max_entries
        programs = {"on_kfree_skb": PROG_TRACEPOINT}
        bpf = load_program(self._ctx.bpf_dir, "dropreason.c", defines, programs)
        try:
            table = bpf.get_table(MAP_NAME)
            _insert_overflow_key(table)
            bpf.attach_tracepoint(tp=TRACEPOINT.encode(), fn_name=b"on_kfree_skb")
        except Exception as err:
            bpf.cleanup()
            raise AttachError(f"tracepoint {TRACEPOINT}: {err}", reason="attach") from err
        return self._program(bpf, settings, metrics)

    def _program(
        self, bpf: Any, settings: DropReasonSettings, metrics: MetricsSettings
    ) -> _Program:
        advanced = metrics.mode == "advanced"
        reader = BatchReader(bpf.get_table(MAP_NAME), DropKey, DropValue, percpu=True)
        prog = _Program(bpf, reader, settings.max_entries, advanced)
        if advanced:
            prog.ledger = self._new_ledger(reader, metrics)
        return prog

    def _new_ledger(
        self, reader: BatchReader[DropKey, DropValue], metrics: MetricsSettings
    ) -> SeriesLedger:
        def take(key: bytes) -> Values | None:
            value = reader.take(DropKey.from_buffer_copy(key))
            return None if value is None else (value.packets, value.bytes)

        ep = tuple(naming.endpoint_label_values(OVERFLOW_ENDPOINT, "", ip_label=metrics.ip_label))
        return SeriesLedger(
            width=2,
            grace=float(self._ctx.series.grace_period_seconds),
            cap=self._ctx.series.max_endpoint_series,
            overflow=lambda labels: (*labels[:2], *ep),
            take=take,
            coarse=lambda labels: labels[:2],
            series_per_labels=2,  # packets and bytes
        )

    def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.stop()
            self._sweeper = None
        with self._lock:  # a scrape in _account holds it while reading the map's fd
            prog, self._prog = self._prog, None
        if prog is not None:
            _close(prog)

    def reload(self, settings: Any, metrics: MetricsSettings) -> None:
        """New naming applies at once; a new capacity or mode needs a new program (its
        counters start from zero, which Prometheus reads as a counter reset). On failure
        the running program keeps counting."""
        assert isinstance(settings, DropReasonSettings)
        old = self._prog
        rebuild = old is None or (
            settings.max_entries != old.capacity or (metrics.mode == "advanced") != old.advanced
        )
        if rebuild and self._names is not None:
            try:
                new = self._build(settings, metrics)
            except KernelError as err:  # the running program keeps counting
                raise PluginError(
                    f"dropreason: new settings refused, running the old: {err}"
                ) from err
            with self._lock:
                self._prog = new
            if old is not None:
                _close(old)
        elif old is not None and old.advanced and metrics != self._metrics:
            with self._lock:  # label shapes changed: bind keys afresh
                old.ledger = self._new_ledger(old.reader, metrics)
        self._settings, self._metrics = settings, metrics

    # --- metrics ---------------------------------------------------------------------------

    def describe(self) -> Iterable[Metric]:
        return [*self._families()[0], naming.series_dropped([])]

    def collect(self) -> Iterable[Metric]:
        families, (packets, nbytes, ep_packets, ep_bytes, overflow) = self._families()
        account = self._account()
        if account is None:
            return []
        basic, per_ep, entries, overflowed, prog = account
        for labels, (p, b) in sorted(basic.items()):
            packets.add_metric(list(labels), p)
            nbytes.add_metric(list(labels), b)
        for ep_labels, (p, b) in sorted(per_ep.items()):
            ep_packets.add_metric(list(ep_labels), p)
            ep_bytes.add_metric(list(ep_labels), b)
        overflow.add_metric([MAP_NAME], overflowed)
        dropped = naming.series_dropped(
            [(MAP_NAME, prog.ledger.dropped)] if prog.ledger is not None else []
        )
        return [*families, dropped, *naming.map_gauges([(MAP_NAME, entries, prog.capacity)])]

    def _account(
        self,
    ) -> tuple[dict[Labels, Values], dict[Labels, Values], int, int, _Program] | None:
        """Read the map once; in advanced mode name each key and run it through the ledger.

        Returns (node-level totals, endpoint totals, entries, overflow packets, program).
        """
        with self._lock:
            prog = self._prog
            if prog is None:
                return None
            ip_label = self._metrics.ip_label
            name = self.names.retina_name if self._metrics.naming == "retina" else self.names.name
            basic: dict[Labels, list[int]] = {}
            records: list[Record] = []
            seen: dict[bytes, tuple[Endpoint, str]] = {}  # one resolver call per address
            entries = overflowed = 0
            for key, value in prog.reader.read():
                entries += 1
                if key.family == FAMILY_OVERFLOW:
                    overflowed = value.packets
                    if not value.packets:
                        continue
                    labels: Labels = (OVERFLOW_REASON, Direction.UNKNOWN.label)
                    ep, ip = OVERFLOW_ENDPOINT, ""
                else:
                    labels = (name(key.reason), _direction(key.direction))
                    ep, ip = self._endpoint(key, seen) if prog.advanced else (UNKNOWN_ENDPOINT, "")
                if prog.ledger is None:
                    _add(basic, labels, value)
                    continue
                ep_values = naming.endpoint_label_values(ep, ip, ip_label=ip_label)
                live = ep is not UNKNOWN_ENDPOINT
                values = (value.packets, value.bytes)
                records.append(Record(bytes(key), (*labels, *ep_values), values, live))
            if prog.ledger is None:
                return {k: (v[0], v[1]) for k, v in basic.items()}, {}, entries, overflowed, prog
            per_ep = prog.ledger.update(_named_once_behind_known(prog, records, self._ctx.resolver))
            return prog.ledger.coarse_totals(), per_ep, entries, overflowed, prog

    def _families(
        self,
    ) -> tuple[list[Metric], tuple[Family, Family, Family, Family, CounterMetricFamily]]:
        n, ip_label = self._metrics.naming, self._metrics.ip_label
        packets = cast(Family, naming.DROP_PACKETS.family(n, ip_label=ip_label))
        nbytes = cast(Family, naming.DROP_BYTES.family(n, ip_label=ip_label))
        ep_packets = cast(Family, naming.ENDPOINT_DROP_PACKETS.family(n, ip_label=ip_label))
        ep_bytes = cast(Family, naming.ENDPOINT_DROP_BYTES.family(n, ip_label=ip_label))
        overflow = CounterMetricFamily(
            naming.MAP_OVERFLOW_PACKETS,
            "Packets counted into a map's overflow entry because the map was full.",
            labels=["map"],
        )
        families: list[Metric] = [packets, nbytes]
        if self._metrics.mode == "advanced":
            families += [ep_packets, ep_bytes]
        families.append(overflow)
        return families, (packets, nbytes, ep_packets, ep_bytes, overflow)

    def _endpoint(
        self, key: DropKey, seen: dict[bytes, tuple[Endpoint, str]]
    ) -> tuple[Endpoint, str]:
        """The endpoint owning the key's address (UNKNOWN_ENDPOINT, "" for non-IP drops)."""
        if key.family not in (FAMILY_IPV4, FAMILY_IPV6):
            return UNKNOWN_ENDPOINT, ""
        raw = bytes(key.addr)
        if raw not in seen:
            ip = decode_addr(raw, key.family)
            found = self._ctx.resolver.endpoint(ipaddress.ip_address(ip))
            seen[raw] = (found or UNKNOWN_ENDPOINT), ip
        return seen[raw]

    def status(self) -> str:
        if self._prog is None or self._names is None:
            return "not started"
        if self._hooked is not None:
            return f"Retina hooks: {self._hooked.describe()}"
        return f"tracepoint {TRACEPOINT}, {self._names.reason_count} reasons from BTF"

    @property
    def map_id(self) -> int | None:
        """The kernel id of the drop_counts map the scrapes read now (None when stopped):
        for tests and diagnostics (``bpftool map dump id N``), which then read the map
        from the kernel rather than through this plugin."""
        with self._lock:
            prog = self._prog
            return None if prog is None else int(bpf_syscall.map_info(map_fd(prog.reader.table)).id)

    def healthy(self) -> bool:
        """Healthy while the sweeper thread (resolver changes -> ledger) runs."""
        return self._sweeper is not None and self._sweeper.alive


def _named_once_behind_known(
    prog: _Program, records: list[Record], chain: ResolverChain
) -> list[Record]:
    """The records the ledger may bind now: a new key waits until packetparser has handed
    the chain a newer table of the container veths addresses sit behind.

    A drop carries no interface, so the chain names its address by the veth packetparser
    last counted it behind (ResolverChain.endpoint). The packet was counted on the veth
    before it was dropped, but packetparser's latest read may predate it; named then, a
    drop behind a veth would get the address's name (a static /32, say) where the forward
    series got the veth's (the host resolver's, when it comes first), and the ledger keeps
    a key's first name. Any packetparser read after the key's first read has the address,
    so the key is bound from the next scrape on (its counts lose nothing, they show one
    scrape later). Without packetparser's tables (none received yet) nothing waits.
    """
    reads = chain.container_address_reads
    present = {rec.key for rec in records}
    for key in [k for k in prog.first_seen if k not in present]:
        del prog.first_seen[key]  # freed from the map: a new key of it waits again
    ready = []
    for rec in records:
        seen_at = prog.first_seen.setdefault(rec.key, reads)
        if reads == 0 or seen_at < reads or rec.labels[0] == OVERFLOW_REASON:
            ready.append(rec)
    return ready


def _add(acc: dict[Any, list[int]], labels: Any, value: DropValue) -> None:
    slot = acc.setdefault(labels, [0, 0])
    slot[0] += value.packets
    slot[1] += value.bytes


def _direction(raw: int) -> str:
    try:
        return Direction(raw).label
    except ValueError:
        return Direction.UNKNOWN.label


def _insert_overflow_key(table: Any) -> None:
    """Create the overflow key (all-zero per-CPU values) before the program can run."""
    key = DropKey(family=FAMILY_OVERFLOW)
    values = (DropValue * possible_cpus())()
    try:
        bpf_syscall.update(map_fd(table), key, values)
    except OSError as err:
        raise OSError(err.errno, f"{MAP_NAME}: cannot insert the overflow key") from err


def _close(prog: _Program) -> None:
    with contextlib.suppress(Exception):  # already detached: stop() is idempotent
        prog.bpf.detach_tracepoint(TRACEPOINT.encode())
    prog.bpf.cleanup()


def create(settings: DropReasonSettings, ctx: PluginContext) -> DropReasonPlugin:
    """The registry's entry point (retinad.plugins.registry)."""
    return DropReasonPlugin(settings, ctx)
