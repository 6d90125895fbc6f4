"""The bpf(2) commands the long-lived daemon needs, through ctypes and nothing else.

The daemon never imports bcc (it maps ~74 MiB of libbcc and LLVM for a compile that takes
a second): programs and maps are compiled in a short-lived child (kernel/loader.py) and
arrive here as plain file descriptors. What the daemon then does with them is a handful of
bpf() commands: element lookup/update/delete, lookup-and-delete, batch lookup, object info
and test runs. libbpf1 has all of these too, but it is only a few fixed-layout structs
(include/uapi/linux/bpf.h). This is the one wrapper of the syscall: kernel/tcx.py makes
its links through ``bpf`` too.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
from dataclasses import dataclass
from pathlib import Path

_SYS_BPF = {"x86_64": 321, "aarch64": 280, "riscv64": 280, "ppc64le": 361, "s390x": 351}

BPF_MAP_LOOKUP_ELEM = 1
BPF_MAP_UPDATE_ELEM = 2
BPF_MAP_DELETE_ELEM = 3
BPF_PROG_TEST_RUN = 10
BPF_PROG_GET_NEXT_ID = 11
BPF_MAP_GET_NEXT_ID = 12
BPF_PROG_GET_FD_BY_ID = 13
BPF_MAP_GET_FD_BY_ID = 14
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_MAP_LOOKUP_AND_DELETE_ELEM = 21
BPF_MAP_LOOKUP_BATCH = 24
BPF_LINK_GET_NEXT_ID = 31

BPF_ANY = 0
BPF_NOEXIST = 1

_libc = ctypes.CDLL(None, use_errno=True)


def bpf(cmd: int, attr: ctypes.Structure) -> int:
    """bpf(cmd, &attr, sizeof attr); raises OSError carrying the kernel's errno."""
    nr = _SYS_BPF.get(platform.machine())
    if nr is None:
        raise OSError(errno.ENOSYS, f"bpf() syscall number unknown for {platform.machine()}")
    res = int(_libc.syscall(nr, cmd, ctypes.byref(attr), ctypes.sizeof(attr)))
    if res < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return res


class _ElemAttr(ctypes.Structure):
    """union bpf_attr, the BPF_MAP_*_ELEM member."""

    _fields_ = [
        ("map_fd", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
        ("key", ctypes.c_uint64),
        ("value", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
    ]


class _BatchAttr(ctypes.Structure):
    """union bpf_attr, the BPF_MAP_*_BATCH member."""

    _fields_ = [
        ("in_batch", ctypes.c_uint64),
        ("out_batch", ctypes.c_uint64),
        ("keys", ctypes.c_uint64),
        ("values", ctypes.c_uint64),
        ("count", ctypes.c_uint32),
        ("map_fd", ctypes.c_uint32),
        ("elem_flags", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
    ]


class _InfoAttr(ctypes.Structure):
    """union bpf_attr, the BPF_OBJ_GET_INFO_BY_FD member."""

    _fields_ = [
        ("bpf_fd", ctypes.c_uint32),
        ("info_len", ctypes.c_uint32),
        ("info", ctypes.c_uint64),
    ]


class _IdAttr(ctypes.Structure):
    """union bpf_attr, the *_GET_NEXT_ID / *_GET_FD_BY_ID member."""

    _fields_ = [
        ("id", ctypes.c_uint32),
        ("next_id", ctypes.c_uint32),
        ("open_flags", ctypes.c_uint32),
    ]


class _TestRunAttr(ctypes.Structure):
    """union bpf_attr, the BPF_PROG_TEST_RUN member."""

    _fields_ = [
        ("prog_fd", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("data_in", ctypes.c_uint64),
        ("data_out", ctypes.c_uint64),
        ("repeat", ctypes.c_uint32),
        ("duration", ctypes.c_uint32),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_uint64),
        ("ctx_out", ctypes.c_uint64),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
    ]


class MapInfoStruct(ctypes.Structure):
    """struct bpf_map_info (the part every kernel since 5.8 fills)."""

    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("name", ctypes.c_char * 16),
        ("ifindex", ctypes.c_uint32),
        ("btf_vmlinux_value_type_id", ctypes.c_uint32),
        ("netns_dev", ctypes.c_uint64),
        ("netns_ino", ctypes.c_uint64),
        ("btf_id", ctypes.c_uint32),
        ("btf_key_type_id", ctypes.c_uint32),
        ("btf_value_type_id", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
        ("map_extra", ctypes.c_uint64),
    ]


class ProgInfoStruct(ctypes.Structure):
    """struct bpf_prog_info, up to the name (all the loader checks)."""

    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("tag", ctypes.c_uint8 * 8),
        ("jited_prog_len", ctypes.c_uint32),
        ("xlated_prog_len", ctypes.c_uint32),
        ("jited_prog_insns", ctypes.c_uint64),
        ("xlated_prog_insns", ctypes.c_uint64),
        ("load_time", ctypes.c_uint64),
        ("created_by_uid", ctypes.c_uint32),
        ("nr_map_ids", ctypes.c_uint32),
        ("map_ids", ctypes.c_uint64),
        ("name", ctypes.c_char * 16),
    ]


@dataclass(frozen=True)
class MapInfo:
    """What the kernel says a map fd is."""

    id: int
    type: int
    key_size: int
    value_size: int
    max_entries: int
    name: str


@dataclass(frozen=True)
class ProgInfo:
    """What the kernel says a program fd is."""

    id: int
    type: int
    name: str


def fd_kind(fd: int) -> str:
    """The anon-inode kind of an fd: "bpf-map", "bpf-prog", "bpf_link", "[perf_event]" ...

    OBJ_GET_INFO_BY_FD accepts maps, programs, links and BTF alike and reports no kind,
    so the kind comes from /proc/self/fd (``anon_inode:bpf-map``).
    """
    target = os.readlink(f"/proc/self/fd/{fd}")
    return target.removeprefix("anon_inode:")


def map_info(fd: int) -> MapInfo:
    """BPF_OBJ_GET_INFO_BY_FD on a map; OSError(EINVAL) if fd is not a map."""
    if fd_kind(fd) != "bpf-map":
        raise OSError(errno.EINVAL, f"fd {fd} is {fd_kind(fd)}, not a BPF map")
    info = MapInfoStruct()
    bpf(BPF_OBJ_GET_INFO_BY_FD, _InfoAttr(fd, ctypes.sizeof(info), ctypes.addressof(info)))
    return MapInfo(info.id, info.type, info.key_size, info.value_size, info.max_entries,
                   info.name.decode())  # fmt: skip


def prog_info(fd: int) -> ProgInfo:
    """BPF_OBJ_GET_INFO_BY_FD on a program; OSError(EINVAL) if fd is not a program."""
    if fd_kind(fd) != "bpf-prog":
        raise OSError(errno.EINVAL, f"fd {fd} is {fd_kind(fd)}, not a BPF program")
    info = ProgInfoStruct()
    bpf(BPF_OBJ_GET_INFO_BY_FD, _InfoAttr(fd, ctypes.sizeof(info), ctypes.addressof(info)))
    return ProgInfo(info.id, info.type, info.name.decode())


def _ids(cmd: int) -> list[int]:
    out: list[int] = []
    attr = _IdAttr(0, 0, 0)
    while True:
        try:
            bpf(cmd, attr)
        except OSError as err:
            if err.errno == errno.ENOENT:
                return out
            raise
        out.append(attr.next_id)
        attr.id = attr.next_id


def prog_ids() -> list[int]:
    """IDs of every BPF program loaded on this host (for leak checks)."""
    return _ids(BPF_PROG_GET_NEXT_ID)


def map_ids() -> list[int]:
    """IDs of every BPF map on this host (for leak checks)."""
    return _ids(BPF_MAP_GET_NEXT_ID)


def link_ids() -> list[int]:
    """IDs of every BPF link on this host (for leak checks)."""
    return _ids(BPF_LINK_GET_NEXT_ID)


def map_fd_by_id(map_id: int) -> int:
    """A new fd for the map with this ID; OSError(ENOENT) once the map is freed."""
    return bpf(BPF_MAP_GET_FD_BY_ID, _IdAttr(map_id, 0, 0))


def prog_fd_by_id(prog_id: int) -> int:
    """A new fd for the program with this ID; OSError(ENOENT) once it is freed."""
    return bpf(BPF_PROG_GET_FD_BY_ID, _IdAttr(prog_id, 0, 0))


def lookup(fd: int, key: object, value: object) -> bool:
    """BPF_MAP_LOOKUP_ELEM into ``value`` (a ctypes buffer); False if the key is absent."""
    try:
        bpf(BPF_MAP_LOOKUP_ELEM, _ElemAttr(fd, 0, _addr(key), _addr(value), 0))
    except OSError as err:
        if err.errno == errno.ENOENT:
            return False
        raise
    return True


def update(fd: int, key: object, value: object, flags: int = BPF_ANY) -> None:
    """BPF_MAP_UPDATE_ELEM; raises OSError (EEXIST with BPF_NOEXIST, E2BIG when full)."""
    bpf(BPF_MAP_UPDATE_ELEM, _ElemAttr(fd, 0, _addr(key), _addr(value), flags))


def delete(fd: int, key: object) -> bool:
    """BPF_MAP_DELETE_ELEM; False if the key was absent."""
    try:
        bpf(BPF_MAP_DELETE_ELEM, _ElemAttr(fd, 0, _addr(key), 0, 0))
    except OSError as err:
        if err.errno == errno.ENOENT:
            return False
        raise
    return True


def lookup_and_delete(fd: int, key: object, value: object) -> bool:
    """BPF_MAP_LOOKUP_AND_DELETE_ELEM (hash maps since 5.14); False if the key was absent."""
    try:
        bpf(BPF_MAP_LOOKUP_AND_DELETE_ELEM, _ElemAttr(fd, 0, _addr(key), _addr(value), 0))
    except OSError as err:
        if err.errno == errno.ENOENT:
            return False
        raise
    return True


def lookup_batch(
    fd: int,
    in_batch: ctypes.c_uint32 | None,
    out_batch: ctypes.c_uint32,
    keys: object,
    values: object,
    count: int,
) -> tuple[int, bool]:
    """One BPF_MAP_LOOKUP_BATCH call: (entries copied, whether the map is exhausted).

    Raises OSError for anything but the final ENOENT (including ENOSPC: one hash bucket
    holds more entries than ``count``; the caller grows its buffers and retries).
    """
    attr = _BatchAttr(
        in_batch=0 if in_batch is None else ctypes.addressof(in_batch),
        out_batch=ctypes.addressof(out_batch),
        keys=_addr(keys),
        values=_addr(values),
        count=count,
        map_fd=fd,
    )
    try:
        bpf(BPF_MAP_LOOKUP_BATCH, attr)
    except OSError as err:
        if err.errno == errno.ENOENT:
            return attr.count, True
        if err.errno == errno.ENOSPC and attr.count:
            return attr.count, False
        raise
    return attr.count, False


def test_run(prog_fd: int, data: bytes, repeat: int = 1, ctx: bytes | None = None) -> int:
    """BPF_PROG_TEST_RUN a packet through a program; returns the program's return value
    (a u32). ``ctx``: the program's context in (for sched_cls a struct __sk_buff, e.g. to
    set gso_segs), else the kernel's default."""
    buf = ctypes.create_string_buffer(data, len(data))
    attr = _TestRunAttr(prog_fd=prog_fd, data_size_in=len(data), data_in=ctypes.addressof(buf),
                        repeat=repeat)  # fmt: skip
    ctx_buf = None
    if ctx is not None:
        ctx_buf = ctypes.create_string_buffer(ctx, len(ctx))
        attr.ctx_size_in, attr.ctx_in = len(ctx), ctypes.addressof(ctx_buf)
    bpf(BPF_PROG_TEST_RUN, attr)
    return int(attr.retval)


def possible_cpus(path: Path = Path("/sys/devices/system/cpu/possible")) -> int:
    """Number of possible CPUs ("0-3,8-11"): the stride of a per-CPU map value."""
    n = 0
    for part in path.read_text().strip().split(","):
        lo, _, hi = part.partition("-")
        n += int(hi or lo) - int(lo) + 1
    return n


def _addr(obj: object) -> int:
    return ctypes.addressof(obj)  # type: ignore[arg-type]
