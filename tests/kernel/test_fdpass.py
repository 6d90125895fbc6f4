"""kernel/fdpass.py with a real sender process and real BPF objects (raw bpf(2), no bcc).

What must hold: the fds arrive and are checked against the kernel; the objects outlive
the sender; a bad hand-over closes every fd that arrived; a sender that dies before
handing over leaves nothing behind (its map and program are freed, no fd leaks here,
nothing pinned, no link).
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from retinad.kernel import bpf_syscall, fdpass
from tests.daemon_proc import wait_for
from tests.kernel.bpf_objects import MAP_HASH, PROG_SOCKET_FILTER

BPFFS = Path("/sys/fs/bpf")


def open_fds() -> set[int]:
    return {int(n) for n in os.listdir("/proc/self/fd")}


def pinned() -> set[str]:
    return {str(p) for p in BPFFS.rglob("*")} if BPFFS.is_dir() else set()


@dataclass
class Sender:
    proc: subprocess.Popen[str]
    ids: dict[str, int]


@pytest.fixture
def pair() -> Iterator[tuple[fdpass.socket.socket, fdpass.socket.socket]]:
    a, b = fdpass.socketpair()
    yield a, b
    a.close()
    b.close()


def start_sender(child_sock: fdpass.socket.socket, mode: str) -> Sender:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.kernel.bpf_objects", str(child_sock.fileno()), mode],
        pass_fds=[child_sock.fileno()],
        stdout=subprocess.PIPE,
        text=True,
    )
    child_sock.close()
    assert proc.stdout is not None
    ids = json.loads(proc.stdout.readline())
    proc.stdout.close()
    return Sender(proc, ids)


def freed(map_id: int, prog_id: int) -> bool:
    """Whether both objects are gone from the kernel (freeing is deferred: poll)."""
    for get in (
        lambda: bpf_syscall.map_fd_by_id(map_id),
        lambda: bpf_syscall.prog_fd_by_id(prog_id),
    ):
        try:
            os.close(get())
            return False
        except OSError as err:
            assert err.errno == errno.ENOENT, err
    return True


def test_fds_arrive_checked_and_outlive_the_sender(pair) -> None:  # type: ignore[no-untyped-def]
    parent, child = pair
    sender = start_sender(child, "ok")
    before = open_fds()
    header, fds = fdpass.receive(parent)
    objects = fdpass.receive_objects(header, fds)
    assert sender.proc.wait(timeout=30) == 0  # the sender is gone ...
    assert [(o.name, o.kind, o.type) for o in objects] == [
        ("counts", "map", MAP_HASH),
        ("filter", "prog", PROG_SOCKET_FILTER),
    ]
    m, p = objects[0].fd, objects[1].fd
    # ... and its objects live on, with the same identity and content.
    assert bpf_syscall.map_info(m).id == sender.ids["map"]
    assert bpf_syscall.prog_info(p).id == sender.ids["prog"]
    assert bpf_syscall.prog_info(p).name == "fdp_test_prog"
    value = ctypes.c_uint64()
    assert bpf_syscall.lookup(m, ctypes.c_uint32(7), value)
    assert value.value == 4242
    bpf_syscall.update(m, ctypes.c_uint32(8), ctypes.c_uint64(1))
    assert bpf_syscall.lookup(m, ctypes.c_uint32(8), value) and value.value == 1
    assert os.get_inheritable(m) is False  # a later child would not inherit it
    fdpass.close_all([m, p])
    assert open_fds() == before
    wait_for(lambda: freed(sender.ids["map"], sender.ids["prog"]), what="objects freed")


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        ("wrong-kind", "counts: expected a BPF prog, the fd is bpf-map"),
        ("wrong-type", "counts: expected BPF map type 2, the kernel says 1"),
        ("not-bpf", "filter: expected a BPF prog, the fd is pipe:["),
        ("short", "manifest lists 1 objects but 2 fds arrived"),
    ],
)
def test_a_bad_hand_over_closes_every_fd_and_frees_the_objects(
    pair, mode: str, message: str
) -> None:  # type: ignore[no-untyped-def]
    parent, child = pair
    sender = start_sender(child, mode)
    before = open_fds()
    header, fds = fdpass.receive(parent)
    assert len(fds) == 2
    with pytest.raises(fdpass.HandoverError) as exc:
        fdpass.receive_objects(header, fds)
    assert message in str(exc.value)
    assert sender.proc.wait(timeout=30) == 0
    assert open_fds() == before
    wait_for(lambda: freed(sender.ids["map"], sender.ids["prog"]), what="objects freed")


def test_a_sender_that_dies_before_handing_over_leaves_nothing(pair) -> None:  # type: ignore[no-untyped-def]
    parent, child = pair
    before_pins = pinned()
    sender = start_sender(child, "die")
    before_fds = open_fds()
    with pytest.raises(fdpass.HandoverError, match="closed the socket without handing anything"):
        fdpass.receive(parent)
    assert sender.proc.wait(timeout=30) == -9
    assert open_fds() == before_fds
    wait_for(lambda: freed(sender.ids["map"], sender.ids["prog"]), what="objects freed")
    assert pinned() == before_pins
    # A freed program has no link either: a BPF link holds a reference to its program.
