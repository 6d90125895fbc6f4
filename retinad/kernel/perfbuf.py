"""Drain a BPF_MAP_TYPE_PERF_EVENT_ARRAY (one perf ring per CPU) from a thread.

The fallback transport where the kernel has no ring buffer (before 5.8). libbpf's
``perf_buffer__new_raw`` opens one ``PERF_COUNT_SW_BPF_OUTPUT`` event per CPU with our own
``perf_event_attr``, mmaps ``page_cnt`` pages for each, stores them in the map and puts them
in one epoll set. The raw variant is used, not ``perf_buffer__new``, because only it lets
us set ``wakeup_events``: the plain one wakes the reader on every event, which cost 8-9 µs
per event on the test VM (docs/PERFORMANCE.md, ../shared/research/perf.md) against 0.5 µs
with ``wakeup_events = 64``. What is left below the threshold is taken by the timed drain
(``perf_buffer__consume`` reads every CPU's ring whether it woke or not).

Records the kernel could not store (a full per-CPU ring) come back as PERF_RECORD_LOST
with a count: ``lost`` sums them. The BPF side counts the same failures itself (the
``bpf_perf_event_output`` return value), so the two are a cross-check, not two losses.
"""

from __future__ import annotations

import ctypes
import struct

from retinad.kernel.perf_event import PERF_SAMPLE_RAW, PerfEventAttr
from retinad.kernel.ringbuf import DrainThread, OnRecord, check_new, libbpf

PERF_TYPE_SOFTWARE = 1
PERF_COUNT_SW_BPF_OUTPUT = 10

PERF_RECORD_LOST = 2
PERF_RECORD_SAMPLE = 9
LIBBPF_PERF_EVENT_CONT = -2

PERF_EVENT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p)
"""enum bpf_perf_event_ret (*perf_buffer_event_fn)(void *ctx, int cpu,
struct perf_event_header *event)"""

_HEADER = struct.Struct("=IHH")  # type, misc, size
_SAMPLE_SIZE = struct.Struct("=I")
_LOST = struct.Struct("=QQ")  # id, lost


def _prototypes() -> ctypes.CDLL:
    lib = libbpf()
    vp, i = ctypes.c_void_p, ctypes.c_int
    lib.perf_buffer__new_raw.restype = vp
    lib.perf_buffer__new_raw.argtypes = [i, ctypes.c_size_t, ctypes.POINTER(PerfEventAttr),
                                         PERF_EVENT_FN, vp, vp]  # fmt: skip
    lib.perf_buffer__poll.restype = i
    lib.perf_buffer__poll.argtypes = [vp, i]
    lib.perf_buffer__consume.restype = i
    lib.perf_buffer__consume.argtypes = [vp]
    lib.perf_buffer__free.restype = None
    lib.perf_buffer__free.argtypes = [vp]
    return lib


class PerfReader(DrainThread):
    """Consume a perf event array by fd: ``page_cnt`` pages (a power of two) per CPU, a
    wakeup every ``wakeup_events`` events per CPU, a drain every ``drain_interval`` s."""

    kind = "perf"

    def __init__(
        self,
        map_fd: int,
        on_record: OnRecord,
        *,
        page_cnt: int = 64,
        wakeup_events: int = 64,
        drain_interval: float = 0.005,
    ) -> None:
        super().__init__(on_record, drain_interval)
        if page_cnt <= 0 or page_cnt & (page_cnt - 1):
            raise ValueError(f"page_cnt must be a power of two, got {page_cnt}")
        self._lib = _prototypes()
        self.lost = 0
        attr = PerfEventAttr(
            type=PERF_TYPE_SOFTWARE,
            size=ctypes.sizeof(PerfEventAttr),
            config=PERF_COUNT_SW_BPF_OUTPUT,
            sample_period=1,
            sample_type=PERF_SAMPLE_RAW,
            wakeup_events=max(1, wakeup_events),
        )

        def event(_ctx: int | None, _cpu: int, header: int) -> int:
            kind, _misc, size = _HEADER.unpack(ctypes.string_at(header, _HEADER.size))
            if kind == PERF_RECORD_SAMPLE:
                raw = ctypes.string_at(header + _HEADER.size, size - _HEADER.size)
                (n,) = _SAMPLE_SIZE.unpack_from(raw)
                self._deliver(raw[4 : 4 + n])  # n includes perf's padding to 8 bytes
            elif kind == PERF_RECORD_LOST:
                _id, lost = _LOST.unpack(ctypes.string_at(header + _HEADER.size, _LOST.size))
                self.lost += lost
            return LIBBPF_PERF_EVENT_CONT

        self._cb = PERF_EVENT_FN(event)  # kept: libbpf holds the pointer
        ctypes.set_errno(0)
        ptr = self._lib.perf_buffer__new_raw(map_fd, page_cnt, ctypes.byref(attr), self._cb,
                                             None, None)  # fmt: skip
        self._obj = check_new(ptr, f"perf_buffer__new_raw(fd {map_fd})")

    def _poll(self, obj: int, timeout_ms: int) -> int:
        return int(self._lib.perf_buffer__poll(obj, timeout_ms))

    def _consume(self, obj: int) -> int:
        return int(self._lib.perf_buffer__consume(obj))

    def _free(self, obj: int) -> None:
        self._lib.perf_buffer__free(obj)
