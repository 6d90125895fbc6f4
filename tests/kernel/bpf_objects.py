"""Make small real BPF objects with raw bpf(2) calls, for hand-over tests that need no bcc.

Run as a script it is the sender in tests/kernel/test_fdpass.py: it creates a map and a
program, prints their IDs, then hands them over (or misbehaves, as told) on the socket fd
it was given.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import sys

from retinad.kernel import bpf_syscall, fdpass

BPF_MAP_CREATE = 0
BPF_PROG_LOAD = 5
MAP_HASH = 1
MAP_ARRAY = 2
PROG_SOCKET_FILTER = 1


class _MapCreateAttr(ctypes.Structure):
    _fields_ = [
        ("map_type", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("inner_map_fd", ctypes.c_uint32),
        ("numa_node", ctypes.c_uint32),
        ("map_name", ctypes.c_char * 16),
        ("_rest", ctypes.c_uint8 * 64),
    ]


class _ProgLoadAttr(ctypes.Structure):
    _fields_ = [
        ("prog_type", ctypes.c_uint32),
        ("insn_cnt", ctypes.c_uint32),
        ("insns", ctypes.c_uint64),
        ("license", ctypes.c_uint64),
        ("log_level", ctypes.c_uint32),
        ("log_size", ctypes.c_uint32),
        ("log_buf", ctypes.c_uint64),
        ("kern_version", ctypes.c_uint32),
        ("prog_flags", ctypes.c_uint32),
        ("prog_name", ctypes.c_char * 16),
        ("_rest", ctypes.c_uint8 * 64),
    ]


def map_create(name: str, map_type: int = MAP_HASH, entries: int = 16) -> int:
    """A map of u32 keys and u64 values; returns its fd."""
    attr = _MapCreateAttr(map_type=map_type, key_size=4, value_size=8, max_entries=entries,
                          map_name=name.encode())  # fmt: skip
    return bpf_syscall.bpf(BPF_MAP_CREATE, attr)


def prog_load(name: str) -> int:
    """A socket filter that returns 0 (``r0 = 0; exit``); returns its fd."""
    insns = (ctypes.c_uint64 * 2)(0x000000B7, 0x00000095)  # mov64 r0, 0 ; exit
    lic = ctypes.create_string_buffer(b"GPL")
    attr = _ProgLoadAttr(prog_type=PROG_SOCKET_FILTER, insn_cnt=2, insns=ctypes.addressof(insns),
                         license=ctypes.addressof(lic), prog_name=name.encode())  # fmt: skip
    return bpf_syscall.bpf(BPF_PROG_LOAD, attr)


def _main(fd: int, mode: str) -> None:
    sock = socket.socket(fileno=fd)
    m = map_create("fdp_test_map")
    p = prog_load("fdp_test_prog")
    key, value = ctypes.c_uint32(7), ctypes.c_uint64(4242)
    bpf_syscall.update(m, key, value)
    ids = {"map": bpf_syscall.map_info(m).id, "prog": bpf_syscall.prog_info(p).id}
    print(json.dumps(ids), flush=True)
    objects = [
        fdpass.HandedObject("counts", "map", MAP_HASH, m),
        fdpass.HandedObject("filter", "prog", PROG_SOCKET_FILTER, p),
    ]
    if mode == "die":  # dies after creating, before handing over
        os.kill(os.getpid(), signal.SIGKILL)
    if mode == "wrong-kind":
        objects[0] = fdpass.HandedObject("counts", "prog", MAP_HASH, m)
    if mode == "wrong-type":
        objects[0] = fdpass.HandedObject("counts", "map", MAP_ARRAY, m)
    if mode == "not-bpf":
        r, _ = os.pipe()
        objects[1] = fdpass.HandedObject("filter", "prog", PROG_SOCKET_FILTER, r)
    if mode == "short":
        fdpass.send(sock, {"ok": True, "objects": [{"name": "counts", "kind": "map",
                                                    "type": MAP_HASH}]}, [m, p])  # fmt: skip
    else:
        fdpass.send_objects(sock, objects)
    os._exit(0)


if __name__ == "__main__":
    _main(int(sys.argv[1]), sys.argv[2])
