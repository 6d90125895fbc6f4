"""bpf/flow_events.h on crafted frames through BPF_PROG_TEST_RUN, over both transports.

packetparser.c is compiled with flow events on, the frames of a scripted exchange run
through pp_host_ingress, and the events are read back with the real readers
(kernel/ringbuf.py, kernel/perfbuf.py). Counts are exact: every event of low aggregation,
each report of high aggregation with its packet and byte deltas, the sampled count within
a stated bound, and a ring too small for a burst losing exactly what the kernel counted,
while the metric counters stay exact throughout.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from retinad.kernel import abi, bpf_syscall
from retinad.kernel.compile import compile_program
from retinad.kernel.maps import BatchReader, percpu_u64_sums
from retinad.kernel.perfbuf import PerfReader
from retinad.kernel.ringbuf import DrainThread, RingBufReader
from retinad.plugins.flow_events_table import ConnTable
from tests.kernel.pp_helpers import bpf_dir, prog_test_run

ETH = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
CLIENT, SERVER = "10.1.0.1", "10.2.0.2"


@dataclass
class Events:
    bpf: Any
    reader: DrainThread
    prog: int
    got: list[abi.FlowEvent] = field(default_factory=list)

    def run(self, frame: bytes) -> None:
        assert prog_test_run(self.prog, frame) == -1  # TC_ACT_UNSPEC

    def drain(self) -> list[abi.FlowEvent]:
        self.reader.drain()
        out, self.got = self.got, []
        return out

    def stats(self) -> list[int]:
        return percpu_u64_sums(self.bpf[b"fe_stats"], abi.FE_NSTATS)

    def iface_packets(self) -> int:
        r = BatchReader(self.bpf[b"pp_iface"], abi.IfaceKey, abi.TrafficValue, percpu=True)
        return sum(v.packets for _k, v in r.read())


Factory = Callable[..., Events]


@pytest.fixture
def events() -> Iterator[Factory]:
    made: list[Events] = []

    def make(
        transport: str, *, high: bool, sampling: int = 1, pages: int = 64, flows: int = 65536
    ) -> Events:
        from bcc import BPF

        defines = {
            "RETINAD_ADVANCED": 0,
            "RETINAD_FLOW_EVENTS": 1,
            "RETINAD_FE_TRANSPORT": abi.TRANSPORTS[transport],
            "RETINAD_FE_HIGH": int(high),
            "RETINAD_FE_SAMPLING": sampling,
            "RETINAD_FE_RING_PAGES": pages,
            "RETINAD_FE_CONN_ENTRIES": flows,
        }
        b = compile_program(bpf_dir(), "packetparser.c", defines)
        prog = b.load_func(b"pp_host_ingress", BPF.SCHED_CLS).fd
        ev = Events(b, None, prog)  # type: ignore[arg-type]

        def sink(data: bytes) -> None:
            ev.got.append(abi.FlowEvent.from_buffer_copy(data[: abi.ctypes.sizeof(abi.FlowEvent)]))

        if transport == "ringbuf":
            ev.reader = RingBufReader(b[b"fe_ring"].map_fd, sink)
        else:
            ev.reader = PerfReader(b[b"fe_perf"].map_fd, sink, page_cnt=pages, wakeup_events=64)
        made.append(ev)
        return ev

    yield make
    for ev in made:
        ev.reader.close()
        ev.bpf.cleanup()


def tcp(flags: str, payload: int = 0, sport: int = 40000) -> bytes:
    seg = ETH / IP(src=CLIENT, dst=SERVER) / TCP(sport=sport, dport=80, flags=flags)
    return bytes(seg / Raw(b"y" * payload)) if payload else bytes(seg)


def udp(sport: int, payload: int = 20) -> bytes:
    return bytes(
        ETH / IP(src=CLIENT, dst=SERVER) / UDP(sport=sport, dport=53) / Raw(b"q" * payload)
    )


# One direction of an HTTP-like exchange, as the server's ingress sees it.
EXCHANGE = [tcp("S"), tcp("A"), tcp("PA", 100), tcp("PA", 200), tcp("PA", 300), tcp("A"),
            tcp("FA"), tcp("A")]  # fmt: skip
UDP_SCRIPT = [udp(5000), udp(5000, 40), udp(5001)]
TRANSPORTS = ["ringbuf", "perf"]


def key(ev: abi.FlowEvent) -> tuple[str, str, int, int, int]:
    src, dst = abi.decode_addr(ev.src, ev.family), abi.decode_addr(ev.dst, ev.family)
    return src, dst, _port(ev.sport), _port(ev.dport), ev.l4proto


def _port(be: int) -> int:
    return int.from_bytes(be.to_bytes(2, "little"), "big")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_low_aggregation_reports_every_packet_exactly(events: Factory, transport: str) -> None:
    e = events(transport, high=False)
    for frame in EXCHANGE + UDP_SCRIPT:
        e.run(frame)
    got = e.drain()
    assert len(got) == len(EXCHANGE) + len(UDP_SCRIPT)
    assert [(ev.packets, ev.bytes) for ev in got] == [(1, len(f)) for f in EXCHANGE + UDP_SCRIPT]
    assert [abi.tcp_flag_names(ev.tcp_flags) for ev in got[:3]] == [
        ["SYN"], ["ACK"], ["PSH", "ACK"],
    ]  # fmt: skip
    assert key(got[0]) == (CLIENT, SERVER, 40000, 80, 6)
    assert key(got[-1]) == (CLIENT, SERVER, 5001, 53, 17)
    assert {(ev.reason, ev.direction, ev.host, ev.ifindex) for ev in got} == {
        (0, abi.DIR_INGRESS, 1, 1)  # reason packet, on lo (BPF_PROG_TEST_RUN's skb)
    }
    assert e.stats() == [len(got), 0, 0, 0]
    assert e.iface_packets() == len(got)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_high_aggregation_reports_carry_the_connection_totals(
    events: Factory, transport: str
) -> None:
    e = events(transport, high=True)
    for frame in EXCHANGE:
        e.run(frame)
    got = e.drain()
    # SYN (new), ACK (a new flag), the first PSH (new flag), FIN (control); the two
    # further data segments and the ACK in between ride on the FIN's report.
    assert [(abi.FE_REASONS[ev.reason], ev.packets) for ev in got] == [
        ("new", 1), ("flags", 1), ("flags", 1), ("flags", 4),
    ]  # fmt: skip
    assert [abi.tcp_flag_names(ev.tcp_flags) for ev in got] == [
        ["SYN"], ["ACK"], ["PSH", "ACK"], ["FIN", "PSH", "ACK"],
    ]  # fmt: skip
    assert {ev.first_ns for ev in got} == {got[0].first_ns}
    # The closing ACK is still in the table: the idle sweep takes it (here: a flush).
    table = ConnTable(e.bpf[b"fe_conn"])
    assert table.entries() == 1
    tail = list(table.take_idle(0))
    assert [(abi.FE_REASONS[ev.reason], ev.packets, ev.bytes) for ev in tail] == [
        ("flush", 1, len(EXCHANGE[-1]))
    ]
    assert table.entries() == 0
    records = got + tail
    assert sum(ev.packets for ev in records) == len(EXCHANGE) == e.iface_packets()
    assert sum(ev.bytes for ev in records) == sum(len(f) for f in EXCHANGE)
    assert {key(ev) for ev in records} == {(CLIENT, SERVER, 40000, 80, 6)}


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_high_aggregation_udp_flows_report_once_then_on_idle(
    events: Factory, transport: str
) -> None:
    e = events(transport, high=True)
    for frame in UDP_SCRIPT:
        e.run(frame)
    got = e.drain()
    assert [(key(ev)[2], ev.packets, abi.FE_REASONS[ev.reason]) for ev in got] == [
        (5000, 1, "new"), (5001, 1, "new"),
    ]  # fmt: skip
    tail = list(ConnTable(e.bpf[b"fe_conn"]).take_idle(1))  # idle for 1 ns: both
    assert [(key(ev)[2], ev.packets, ev.bytes) for ev in tail] == [(5000, 1, len(UDP_SCRIPT[1]))]


# Sampling 1 in 4 over n = 40,000 independent trials is Binomial(n, 1/4): mean 10,000,
# standard deviation sqrt(n p (1-p)) = 86.6. Six standard deviations (+-520) leave a false
# failure probability of 2e-9 (normal approximation, which at this n is very close); a
# sampler that ignored the rate (40,000) or applied it twice (2,500) is far outside.
SAMPLED_N, RATE = 40_000, 4
SAMPLED_MEAN = SAMPLED_N / RATE
SAMPLED_BOUND = 6 * math.sqrt(SAMPLED_N * (1 / RATE) * (1 - 1 / RATE))


@pytest.mark.parametrize("high", [False, True], ids=["low", "high"])
def test_sampling_1_in_4_over_40000_new_udp_flows(events: Factory, high: bool) -> None:
    e = events("ringbuf", high=high, sampling=RATE, pages=1024)
    base = bytearray(udp(0))
    for i in range(SAMPLED_N):  # each a new flow: the source port (bytes 34-35) differs
        base[34:36] = (10000 + i).to_bytes(2, "big")
        e.run(bytes(base))
    got = e.drain()
    assert abs(len(got) - SAMPLED_MEAN) <= SAMPLED_BOUND, len(got)
    submitted, lost, sampled, untracked = e.stats()
    assert (submitted, lost, untracked) == (len(got), 0, 0)
    assert submitted + sampled == SAMPLED_N  # every flow decided exactly once
    assert e.iface_packets() == SAMPLED_N  # the metric counters never sample
    assert len({key(ev) for ev in got}) == len(got)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_tiny_ring_overflows_and_loses_exactly_what_the_kernel_counted(
    events: Factory, transport: str
) -> None:
    e = events(transport, high=False, pages=1)
    burst = 1000
    # One CPU: perf rings are per CPU, and a ring reports its PERF_RECORD_LOST only with
    # the next record it takes, so the cross-check below needs the same ring throughout.
    cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cpus)})
    try:
        for i in range(burst):
            e.run(udp(20000 + i))
        got = e.drain()  # nothing drained during the burst: the ring had to overflow
        submitted, lost, _sampled, _untracked = e.stats()
        assert 0 < len(got) < burst
        assert submitted == len(got)
        assert submitted + lost == burst
        assert e.iface_packets() == burst
        # and it goes on: the next packets arrive
        for i in range(5):
            e.run(udp(30000 + i))
        assert len(e.drain()) == 5
    finally:
        os.sched_setaffinity(0, cpus)
    if isinstance(e.reader, PerfReader):
        assert e.reader.lost == lost  # perf's own PERF_RECORD_LOST agrees


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_full_connection_table_reports_new_flows_packet_by_packet(
    events: Factory, transport: str
) -> None:
    e = events(transport, high=True, flows=4)
    for i in range(10):  # BPF_PROG_TEST_RUN runs on this CPU: one freelist, exactly 4 fit
        e.run(udp(7000 + i))
    e.run(udp(7009))  # an untracked flow stays untracked: each packet its own report
    got = e.drain()
    assert [abi.FE_REASONS[ev.reason] for ev in got] == ["new"] * 4 + ["untracked"] * 7
    assert sum(ev.packets for ev in got) == 11 == e.iface_packets()
    assert e.stats()[abi.FE_STAT_UNTRACKED] == 7
    assert ConnTable(e.bpf[b"fe_conn"]).entries() == 4


def test_flow_structs_match_bcc_layout(events: Factory) -> None:
    from bcc import BPF

    from tests.kernel.test_abi import layout

    e = events("ringbuf", high=True)
    t = e.bpf[b"fe_conn"]
    assert layout(abi.FlowKey) == layout(t.Key)
    assert layout(abi.FlowState) == layout(t.Leaf)
    assert bpf_syscall.map_info(t.map_fd).max_entries == 65536
    # flow_event travels through a ring, which has no typed value: a map that uses it does.
    probe = BPF(
        text='#include "retinad.h"\nBPF_HASH(ev, int, struct flow_event, 1);',
        cflags=[f"-I{bpf_dir()}"],
    )
    try:
        assert layout(abi.FlowEvent) == layout(probe[b"ev"].Leaf)
        assert abi.ctypes.sizeof(abi.FlowEvent) == 80
    finally:
        probe.cleanup()
