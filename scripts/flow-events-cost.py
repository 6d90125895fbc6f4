"""Measure what one flow event costs in user space: drain, decode, name, JSON line.

    sudo .venv/bin/python scripts/flow-events-cost.py [N]

Fills packetparser's ring buffer (low aggregation) with N events through BPF_PROG_TEST_RUN
on one UDP frame, then times (CPU time of this process) the drain into the queue and the
writer's pass (decode, resolve, JSON lines to /dev/null). A measurement, not a test: the
figures go to docs/PERFORMANCE.md.
"""

from __future__ import annotations

import logging
import sys
import time

from retinad.config.schema import EventLogSettings, EventSettings
from retinad.kernel import bpf_syscall
from retinad.kernel.compile import compile_program, find_bpf_dir
from retinad.plugins.flow_events import FlowEvents, kernel_defines


class NoResolver:
    def by_ip(self, ip: object) -> None:
        return None

    def by_ifindex(self, ifindex: int) -> None:
        return None


def main() -> None:
    from bcc import BPF

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    s = EventSettings(enabled=True, transport="ringbuf", aggregation_level="low",
                      ring_pages=8192, queue_size=1 << 22, socket="",
                      log=EventLogSettings(path="/dev/null"))  # fmt: skip
    defines = {"RETINAD_ADVANCED": 0, **kernel_defines(s)}
    b = compile_program(find_bpf_dir(), "packetparser.c", defines)
    prog = b.load_func(b"pp_host_ingress", BPF.SCHED_CLS).fd

    class Obj:
        def __getitem__(self, name: bytes) -> object:
            t = b[name]
            t.get_fd = lambda: t.map_fd  # what the loader's MapHandle offers
            return t

    ev = FlowEvents(s, defines, Obj(), resolver=NoResolver(), interfaces=dict,
                    logger=logging.getLogger("cost"))  # fmt: skip
    frame = bytes(14) + bytes.fromhex(
        "4500001c000000004011000001020304050607080fa00035000800000000"
    )
    frame = bytes.fromhex("020000000002020000000001") + b"\x08\x00" + frame[14:]
    bpf_syscall.test_run(prog, frame, repeat=n)
    t0 = time.process_time()
    ev._reader.drain()
    t1 = time.process_time()
    ev._sink = None
    from retinad.plugins.flow_events_log import open_sink

    ev._sink = open_sink("/dev/null", 100, 1)
    ev._write_pending()
    t2 = time.process_time()
    got = ev._reader.records
    print(
        f"{got} events: drain {1e6 * (t1 - t0) / got:.2f} us/event, "
        f"record+JSON {1e6 * (t2 - t1) / got:.2f} us/event, "
        f"total {1e6 * (t2 - t0) / got:.2f} us/event"
    )
    ev._reader.close()
    b.cleanup()


if __name__ == "__main__":
    main()
