"""Drain a BPF ring buffer (or, in kernel/perfbuf.py, a perf event array) from a thread.

Why libbpf1 through ctypes and not an own mmap reader (docs/DESIGN.md §7): the ring buffer
protocol needs acquire/release ordering on the producer and consumer positions, the busy
and discard bits of each record header and records that wrap around the end of the data
area. libbpf's ``ring_buffer__*`` does all of it in C and is kept by the kernel's BPF
maintainers; Python cannot express the memory barriers. The map arrives as a plain fd from
the loader, and ``ring_buffer__new`` needs nothing else (no libbpf ``bpf_object``).

Batched, never one wakeup per event: the BPF side submits with ``BPF_RB_NO_WAKEUP`` (and
forces a wakeup only when the ring is filling up), so the drain thread wakes every
``drain_interval`` seconds, or earlier on such a forced wakeup, and consumes everything
there is in one call. The thread is the only one that touches the libbpf object; the GIL
is released while libbpf waits in epoll, so the main loop, the scrape path and the watchdog
never wait for it. Each record is handed to ``on_record`` as ``bytes``: it must be quick
(put it on a queue), since it runs inside libbpf's consume loop.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from collections.abc import Callable

from retinad.errors import RetinadError

log = logging.getLogger(__name__)

OnRecord = Callable[[bytes], None]
"""Called once per record, in the drain thread, with a copy of its bytes."""

RING_SAMPLE_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)
"""int (*ring_buffer_sample_fn)(void *ctx, void *data, size_t size)"""

_lib_cache: ctypes.CDLL | None = None


class EventReaderError(RetinadError):
    """libbpf is missing or refused the map (wrong type, no memory, no permission)."""


def libbpf() -> ctypes.CDLL:
    """libbpf.so.1 with the prototypes this module and kernel/perfbuf.py call."""
    global _lib_cache
    if _lib_cache is not None:
        return _lib_cache
    try:
        lib = ctypes.CDLL("libbpf.so.1", use_errno=True)
    except OSError as err:
        raise EventReaderError(
            f"libbpf.so.1 not found ({err}): install libbpf1 (Debian/Ubuntu) or libbpf"
        ) from err
    vp, i = ctypes.c_void_p, ctypes.c_int
    lib.ring_buffer__new.restype = vp
    lib.ring_buffer__new.argtypes = [i, RING_SAMPLE_FN, vp, vp]
    lib.ring_buffer__poll.restype = i
    lib.ring_buffer__poll.argtypes = [vp, i]
    lib.ring_buffer__consume.restype = i
    lib.ring_buffer__consume.argtypes = [vp]
    lib.ring_buffer__free.restype = None
    lib.ring_buffer__free.argtypes = [vp]
    _lib_cache = lib
    return lib


def check_new(ptr: int | None, what: str) -> int:
    """libbpf 1.x returns NULL and sets errno when it cannot make a buffer object."""
    if not ptr:
        err = ctypes.get_errno()
        raise EventReaderError(f"{what}: {_strerror(err)} (errno {err})")
    return ptr


def _strerror(err: int) -> str:
    return os.strerror(err) if err else "unknown error"


class DrainThread:
    """The thread that polls and consumes one libbpf buffer object; subclasses make it.

    ``records`` counts the records handed to on_record, ``callback_errors`` those whose
    handler raised (the record is then dropped: a bad record must not stop the drain).
    """

    kind = "?"

    def __init__(self, on_record: OnRecord, drain_interval: float) -> None:
        if drain_interval <= 0:
            raise ValueError("drain_interval must be > 0")
        self._on_record = on_record
        self._timeout_ms = max(1, int(drain_interval * 1000))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._obj: int | None = None
        self.records = 0
        self.callback_errors = 0
        self.failure: str | None = None

    # subclasses: make the libbpf object, wait, consume, free
    def _poll(self, obj: int, timeout_ms: int) -> int:
        raise NotImplementedError

    def _consume(self, obj: int) -> int:
        raise NotImplementedError

    def _free(self, obj: int) -> None:
        raise NotImplementedError

    def _deliver(self, data: bytes) -> None:
        self.records += 1
        try:
            self._on_record(data)
        except Exception:  # the drain must go on; the handler's bug is logged once per kind
            self.callback_errors += 1
            if self.callback_errors == 1:
                log.exception("%s reader: record handler failed (record dropped)", self.kind)

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name=f"{self.kind}-drain", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self.failure is None

    def _run(self) -> None:
        obj = self._obj
        assert obj is not None
        while not self._stop.is_set():
            # poll returns on a forced wakeup or after the timeout; consume then takes
            # whatever NO_WAKEUP submissions accumulated, in one pass.
            n = self._poll(obj, self._timeout_ms)
            if n < 0 and n != -4:  # -EINTR is fine
                self.failure = f"poll failed: {_strerror(-n)}"
                log.error("%s reader: %s", self.kind, self.failure)
                return
            if self._consume(obj) < 0:
                self.failure = "consume failed"
                log.error("%s reader: %s", self.kind, self.failure)
                return

    def drain(self) -> None:
        """Consume what is there now, in the caller's thread (only when not started)."""
        if self._obj is None or self._thread is not None:
            raise RuntimeError("drain() is for a reader whose thread is not running")
        self._consume(self._obj)

    def close(self) -> None:
        """Stop the thread (within one drain interval), take what is left, free the buffer."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._obj is not None:
            self._consume(self._obj)
            self._free(self._obj)
            self._obj = None


class RingBufReader(DrainThread):
    """Consume a BPF_MAP_TYPE_RINGBUF map by fd; the fd stays the caller's."""

    kind = "ringbuf"

    def __init__(self, map_fd: int, on_record: OnRecord, drain_interval: float = 0.005) -> None:
        super().__init__(on_record, drain_interval)
        self._lib = libbpf()

        def sample(_ctx: int | None, data: int, size: int) -> int:
            self._deliver(ctypes.string_at(data, size))
            return 0

        self._cb = RING_SAMPLE_FN(sample)  # kept: libbpf holds the pointer
        ctypes.set_errno(0)
        ptr = self._lib.ring_buffer__new(map_fd, self._cb, None, None)
        self._obj = check_new(ptr, f"ring_buffer__new(fd {map_fd})")

    def _poll(self, obj: int, timeout_ms: int) -> int:
        return int(self._lib.ring_buffer__poll(obj, timeout_ms))

    def _consume(self, obj: int) -> int:
        return int(self._lib.ring_buffer__consume(obj))

    def _free(self, obj: int) -> None:
        self._lib.ring_buffer__free(obj)
