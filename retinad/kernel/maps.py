"""BPF maps held by fd: a small handle, and whole-map batch reads summing per-CPU values.

One BPF_MAP_LOOKUP_BATCH call returns thousands of entries, so a scrape costs a few
syscalls per map whatever the packet rate (16k entries: ~8 ms batched vs ~73 ms with
bcc's per-key ``items()``). The daemon holds maps as fds handed over by the compile child
(kernel/loader.py) and drives the syscalls itself (kernel/bpf_syscall.py) with reusable
buffers, so nothing here imports bcc.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Iterator
from typing import Any, Generic, TypeVar

from retinad.kernel import bpf_syscall

K = TypeVar("K", bound=ctypes.Structure)
V = TypeVar("V", bound=ctypes.Structure)

BPF_MAP_TYPE_PERCPU_HASH = 5
BPF_MAP_TYPE_PERCPU_ARRAY = 6
BPF_MAP_TYPE_LRU_PERCPU_HASH = 10
PERCPU_TYPES = frozenset({BPF_MAP_TYPE_PERCPU_HASH, BPF_MAP_TYPE_PERCPU_ARRAY,
                          BPF_MAP_TYPE_LRU_PERCPU_HASH})  # fmt: skip


def possible_cpus() -> int:
    """Number of possible CPUs: the per-CPU value stride the kernel uses."""
    return bpf_syscall.possible_cpus()


class MapHandle:
    """One map by fd, with the slice of bcc's table interface the plugins use.

    ``Key``/``Leaf`` are raw byte buffers of the kernel's sizes (a per-CPU ``Leaf`` holds
    every CPU's 8-byte-aligned slot), so ``handle[key] = handle.Leaf()`` works as it did
    on a bcc table. The handle owns its fd: ``close`` releases it.
    """

    def __init__(self, fd: int, name: str) -> None:
        info = bpf_syscall.map_info(fd)
        self.fd = fd
        self.name = name
        self.info = info
        self.max_entries = info.max_entries
        self.percpu = info.type in PERCPU_TYPES
        slot = (info.value_size + 7) // 8 * 8 if self.percpu else info.value_size
        ncpus = possible_cpus() if self.percpu else 1
        self.Key: type[ctypes.Array[ctypes.c_char]] = ctypes.c_char * info.key_size
        self.Leaf: type[ctypes.Array[ctypes.c_char]] = ctypes.c_char * (slot * ncpus)

    @property
    def map_fd(self) -> int:
        return self.fd

    def get_fd(self) -> int:
        return self.fd

    def __setitem__(self, key: Any, value: Any) -> None:
        bpf_syscall.update(self.fd, key, value)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __repr__(self) -> str:
        return f"MapHandle({self.name!r}, fd={self.fd}, id={self.info.id})"


def map_fd(table: Any) -> int:
    """The fd of a MapHandle or a bcc table (tests still build some with bcc)."""
    if hasattr(table, "get_fd"):
        return int(table.get_fd())
    return int(table.map_fd)


class BatchReader(Generic[K, V]):
    """Batch-reads one hash map (per-CPU or not) into (key, summed value) pairs."""

    def __init__(
        self,
        table: Any,
        key_type: type[K],
        value_type: type[V],
        *,
        percpu: bool,
        chunk: int = 4096,
    ) -> None:
        if ctypes.sizeof(value_type) % 8:
            raise ValueError(f"{value_type.__name__}: per-CPU values must be 8-byte multiples")
        self.table = table
        self.key_type = key_type
        self.value_type = value_type
        self.ncpus = possible_cpus() if percpu else 1
        self.words = ctypes.sizeof(value_type) // 8
        self._chunk = 0
        self._resize(min(chunk, max(1, int(table.max_entries))))

    def _resize(self, chunk: int) -> None:
        self._chunk = chunk
        self._keys = (self.key_type * chunk)()
        self._values = (ctypes.c_uint64 * (chunk * self.ncpus * self.words))()

    def read(self) -> Iterator[tuple[K, V]]:
        """Yield every (key, value) with per-CPU values summed field by field."""
        fd = map_fd(self.table)
        token_in = ctypes.c_uint32(0)
        token_out = ctypes.c_uint32(0)
        first = True
        while True:
            try:
                n, done = bpf_syscall.lookup_batch(
                    fd, None if first else token_in, token_out, self._keys, self._values,
                    self._chunk,
                )  # fmt: skip
            except OSError as err:
                if err.errno == errno.ENOSPC:
                    # One hash bucket holds more entries than the buffer: grow and retry.
                    self._resize(self._chunk * 2)
                    continue
                raise OSError(err.errno, f"BPF_MAP_LOOKUP_BATCH failed: {err.strerror}") from None
            yield from self._decode(n)
            if done:
                return
            first = False
            token_in.value = token_out.value

    def _decode(self, n: int) -> Iterator[tuple[K, V]]:
        stride = self.ncpus * self.words
        vals = self._values
        for i in range(n):
            key = self.key_type.from_buffer_copy(self._keys[i])
            base = i * stride
            summed = [0] * self.words
            for cpu in range(self.ncpus):
                off = base + cpu * self.words
                for w in range(self.words):
                    summed[w] += vals[off + w]
            yield key, self.value_type.from_buffer_copy((ctypes.c_uint64 * self.words)(*summed))

    def take(self, key: K) -> V | None:
        """Atomically read and delete one key (BPF_MAP_LOOKUP_AND_DELETE_ELEM, hash maps
        since 5.14), summing per-CPU values; None if the key is not in the map.

        Atomic matters: a packet counted between a separate read and delete would be lost.
        """
        buf = (ctypes.c_uint64 * (self.ncpus * self.words))()
        kbuf = self.key_type.from_buffer_copy(bytes(key))
        try:
            found = bpf_syscall.lookup_and_delete(map_fd(self.table), kbuf, buf)
        except OSError as err:
            raise OSError(
                err.errno, f"BPF_MAP_LOOKUP_AND_DELETE_ELEM failed: {err.strerror}"
            ) from None
        if not found:
            return None
        summed = [0] * self.words
        for cpu in range(self.ncpus):
            for w in range(self.words):
                summed[w] += buf[cpu * self.words + w]
        return self.value_type.from_buffer_copy((ctypes.c_uint64 * self.words)(*summed))


def percpu_u64_sums(table: Any, slots: int) -> list[int]:
    """Each slot of a per-CPU array of u64 counters, summed over the CPUs.

    For the small fixed arrays (packetparser's unparsed counters): one lookup per slot,
    at scrape time only.
    """
    fd = map_fd(table)
    ncpus = possible_cpus()
    out: list[int] = []
    for slot in range(slots):
        buf = (ctypes.c_uint64 * ncpus)()
        if not bpf_syscall.lookup(fd, ctypes.c_uint32(slot), buf):
            out.append(0)
            continue
        out.append(sum(buf))
    return out
