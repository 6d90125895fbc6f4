"""High aggregation's connection table (fe_conn) from user space: idle entries out.

The kernel reports a flow on its first packet, on SYN/FIN/RST or a new flag and on the
first packet after report_interval (bpf/flow_events.h). A flow that has gone quiet still
holds what it did since its last report (a closing ACK, the tail of a transfer), and its
entry takes a slot of a bounded table. So every report interval user space batch-reads the
table and takes out, with BPF_MAP_LOOKUP_AND_DELETE_ELEM, each entry idle for at least
``idle_ns``: what it still holds becomes an event here (reason ``idle``), the same shape
the kernel writes, so the rest of the pipeline cannot tell them apart. On stop every entry
is taken (reason ``flush``). Reading costs a few syscalls per 4096 flows, never per packet.
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Iterator
from typing import Any

from retinad.kernel import abi
from retinad.kernel.maps import BatchReader


def monotonic_ns() -> int:
    """The clock of bpf_ktime_get_ns() (CLOCK_MONOTONIC)."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def pending_event(key: abi.FlowKey, st: abi.FlowState, reason: int, now_ns: int) -> abi.FlowEvent:
    """The event for what ``st`` holds beyond its last report."""
    ev = abi.FlowEvent()
    ctypes.memmove(ev.src, key.src, 16)
    ctypes.memmove(ev.dst, key.dst, 16)
    ev.ifindex, ev.sport, ev.dport = key.ifindex, key.sport, key.dport
    ev.family, ev.l4proto, ev.direction, ev.host = key.family, key.l4proto, key.direction, key.host
    ev.ts_ns, ev.first_ns = now_ns, st.first_ns
    ev.packets = st.packets - st.reported_packets
    ev.bytes = st.bytes - st.reported_bytes
    ev.tcp_flags = st.flags_pending
    ev.reason = reason
    return ev


class ConnTable:
    """The fe_conn hash of one loaded packetparser, by its map handle."""

    def __init__(self, table: Any) -> None:
        self._reader = BatchReader(table, abi.FlowKey, abi.FlowState, percpu=False)
        self.capacity = int(table.max_entries)

    def entries(self) -> int:
        return sum(1 for _ in self._reader.read())

    def take_idle(self, idle_ns: int, *, now_ns: int | None = None) -> Iterator[abi.FlowEvent]:
        """Take out every entry idle for ``idle_ns`` (0: all of them); yield an event for
        each that holds unreported packets (sampled-out flows never report)."""
        now = monotonic_ns() if now_ns is None else now_ns
        reason = abi.FE_REASON_FLUSH if idle_ns == 0 else abi.FE_REASON_IDLE
        stale = [k for k, st in self._reader.read() if idle_ns == 0 or now - st.last_ns >= idle_ns]
        for key in stale:
            st = self._reader.take(key)
            if st is None or st.sampled_out or st.packets == st.reported_packets:
                continue
            yield pending_event(key, st, reason, now)
