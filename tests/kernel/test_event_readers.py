"""kernel/ringbuf.py and kernel/perfbuf.py against real maps filled by a real program.

A tiny sched_cls program writes one numbered record per run into a ring buffer or a perf
event array; BPF_PROG_TEST_RUN with ``repeat`` runs it N times in one syscall. Every record
must arrive once, in order, with its content; a ring too small for the burst must lose
exactly what the kernel says it could not store, and the reader must go on.
"""

from __future__ import annotations

import os
import struct
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from retinad.kernel import bpf_syscall
from retinad.kernel.perfbuf import PerfReader
from retinad.kernel.ringbuf import EventReaderError, RingBufReader
from tests.daemon_proc import wait_for

PROGRAM = r"""
#include <uapi/linux/bpf.h>
struct rec { u64 seq; u64 len; };
BPF_RINGBUF_OUTPUT(rb, RB_PAGES);
BPF_PERF_OUTPUT(pb);
BPF_ARRAY(seq, u64, 2);
BPF_ARRAY(lost, u64, 2);

int emit_rb(struct __sk_buff *skb) {
    int z = 0;
    u64 *s = seq.lookup(&z), *l = lost.lookup(&z);
    if (!s || !l)
        return -1;
    struct rec *r = rb.ringbuf_reserve(sizeof(*r));
    if (!r) {
        *l += 1;
        return -1;
    }
    r->seq = (*s)++;
    r->len = skb->len;
    rb.ringbuf_submit(r, BPF_RB_NO_WAKEUP);
    return -1;
}

int emit_pb(struct __sk_buff *skb) {
    int o = 1;
    u64 *s = seq.lookup(&o), *l = lost.lookup(&o);
    if (!s || !l)
        return -1;
    struct rec r = {.seq = *s, .len = skb->len};
    *s += 1;
    if (pb.perf_submit(skb, &r, sizeof(r)) < 0)
        *l += 1;
    return -1;
}
"""
REC = struct.Struct("=QQ")
FRAME = bytes(14) + b"\x45" + bytes(59)  # 74 bytes: only skb->len is read


class Loaded:
    def __init__(self, pages: int) -> None:
        from bcc import BPF

        self.bpf: Any = BPF(text=PROGRAM, cflags=[f"-DRB_PAGES={pages}"])
        self.rb_prog = self.bpf.load_func(b"emit_rb", BPF.SCHED_CLS).fd
        self.pb_prog = self.bpf.load_func(b"emit_pb", BPF.SCHED_CLS).fd
        self.rb_fd = self.bpf[b"rb"].map_fd
        self.pb_fd = self.bpf[b"pb"].map_fd

    def lost(self, slot: int) -> int:
        return int(self.bpf[b"lost"][self.bpf[b"lost"].Key(slot)].value)


@pytest.fixture
def small() -> Iterator[Loaded]:
    loaded = Loaded(pages=1)
    yield loaded
    loaded.bpf.cleanup()


@pytest.fixture
def roomy() -> Iterator[Loaded]:
    loaded = Loaded(pages=256)
    yield loaded
    loaded.bpf.cleanup()


class Sink:
    def __init__(self) -> None:
        self.records: list[tuple[int, int]] = []
        self.threads: set[str] = set()

    def __call__(self, data: bytes) -> None:
        self.records.append(REC.unpack_from(data))
        self.threads.add(threading.current_thread().name)


def test_ringbuf_reader_delivers_every_record_in_order_from_its_thread(roomy: Loaded) -> None:
    sink = Sink()
    reader = RingBufReader(roomy.rb_fd, sink, drain_interval=0.01)
    reader.start()
    try:
        # NO_WAKEUP submissions: only the timed drain can find these.
        bpf_syscall.test_run(roomy.rb_prog, FRAME, repeat=5000)
        wait_for(lambda: len(sink.records) >= 5000, timeout=10)
        assert reader.alive
    finally:
        reader.close()
    assert sink.records == [(i, len(FRAME)) for i in range(5000)]
    assert sink.threads == {"ringbuf-drain"}
    assert roomy.lost(0) == 0
    assert reader.records == 5000


def test_tiny_ringbuf_overflow_is_counted_exactly_where_lost(small: Loaded) -> None:
    sink = Sink()
    reader = RingBufReader(small.rb_fd, sink, drain_interval=0.01)
    # Not started: a 4 KiB ring takes 4096 / (8 header + 16) = 170 records, the rest of the
    # burst fails to reserve in the kernel and is counted there.
    bpf_syscall.test_run(small.rb_prog, FRAME, repeat=1000)
    reader.drain()
    assert len(sink.records) == 4096 // 24
    assert small.lost(0) == 1000 - len(sink.records)
    assert [r[0] for r in sink.records] == list(range(len(sink.records)))
    # Nothing is wedged: the next burst arrives once the reader runs.
    reader.start()
    try:
        bpf_syscall.test_run(small.rb_prog, FRAME, repeat=100)
        wait_for(lambda: len(sink.records) >= 170 + 100, timeout=10)
    finally:
        reader.close()
    assert len(sink.records) + small.lost(0) == 1100


def test_perf_reader_delivers_every_record_with_batched_wakeups(roomy: Loaded) -> None:
    sink = Sink()
    reader = PerfReader(roomy.pb_fd, sink, page_cnt=64, wakeup_events=64, drain_interval=0.01)
    reader.start()
    try:
        bpf_syscall.test_run(roomy.pb_prog, FRAME, repeat=3001)  # not a multiple of 64
        wait_for(lambda: len(sink.records) >= 3001, timeout=10)
        assert reader.alive
    finally:
        reader.close()
    assert sink.records == [(i, len(FRAME)) for i in range(3001)]
    assert sink.threads == {"perf-drain"}
    assert roomy.lost(1) == 0 and reader.lost == 0


def test_tiny_perf_ring_overflow_is_counted_in_kernel_and_by_perf(roomy: Loaded) -> None:
    sink = Sink()
    # One data page per CPU: 4096 / (8 header + 4 size + 16 + 4 pad = 32) = 128 records.
    reader = PerfReader(roomy.pb_fd, sink, page_cnt=1, wakeup_events=1_000_000)
    # One CPU: a per-CPU ring reports PERF_RECORD_LOST with the next record it takes.
    cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cpus)})
    try:
        bpf_syscall.test_run(roomy.pb_prog, FRAME, repeat=1000)
        reader.drain()
        kernel_lost = roomy.lost(1)
        assert kernel_lost > 0
        assert len(sink.records) + kernel_lost == 1000
        # perf's own PERF_RECORD_LOST, written once there is room again, agrees.
        bpf_syscall.test_run(roomy.pb_prog, FRAME, repeat=1)
        reader.drain()
    finally:
        os.sched_setaffinity(0, cpus)
    reader.close()
    assert reader.lost == kernel_lost
    assert [r[0] for r in sink.records[:-1]] == list(range(len(sink.records) - 1))


def test_a_failing_handler_drops_its_record_but_the_drain_goes_on(roomy: Loaded) -> None:
    seen: list[int] = []

    def handler(data: bytes) -> None:
        seq = REC.unpack_from(data)[0]
        if seq == 3:
            raise ValueError("bad record")
        seen.append(seq)

    reader = RingBufReader(roomy.rb_fd, handler)
    bpf_syscall.test_run(roomy.rb_prog, FRAME, repeat=10)
    reader.drain()
    reader.close()
    assert seen == [0, 1, 2, 4, 5, 6, 7, 8, 9]
    assert reader.callback_errors == 1


def test_a_map_of_the_wrong_type_is_refused_with_the_reason(roomy: Loaded) -> None:
    with pytest.raises(EventReaderError, match=r"ring_buffer__new\(fd \d+\): Invalid argument"):
        RingBufReader(roomy.pb_fd, Sink())
