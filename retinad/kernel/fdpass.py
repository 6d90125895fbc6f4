"""Hand BPF program and map fds from one process to another over a unix socket.

The compile child (kernel/loader.py) sends everything in ONE SOCK_SEQPACKET message: a
JSON manifest naming each object (name, kind, BPF type) and the fds as SCM_RIGHTS in the
same order. One message makes the hand-over all or nothing: a child that dies before
sending leaves the parent nothing to close, and the kernel frees the child's objects with
its last fd (nothing is pinned, no link is made). The receiver checks every fd against
the kernel (fd kind from /proc/self/fd, type and name from BPF_OBJ_GET_INFO_BY_FD) and, on
any mismatch or truncation, closes all it got before raising. Fds arrive close-on-exec,
so no later child inherits them.
"""

from __future__ import annotations

import array
import contextlib
import json
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from retinad.kernel import bpf_syscall

MAX_FDS = 128
"""Most fds one hand-over carries (the kernel's SCM_MAX_FD is 253)."""
MAX_MESSAGE = 256 * 1024
"""Largest manifest or error text; a bcc message is cut to fit (see loader.py)."""

Kind = Literal["map", "prog"]
_FD_KINDS: dict[str, str] = {"map": "bpf-map", "prog": "bpf-prog"}


class HandoverError(Exception):
    """The hand-over failed: the peer left, sent too much, or sent the wrong fds."""


@dataclass(frozen=True)
class HandedObject:
    """One object that arrived: its name in the C source, kind, BPF type and our fd."""

    name: str
    kind: Kind
    type: int
    fd: int


def socketpair() -> tuple[socket.socket, socket.socket]:
    """A connected SOCK_SEQPACKET pair: message boundaries kept, fds ride with a message."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for s in (a, b):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, MAX_MESSAGE * 2)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, MAX_MESSAGE * 2)
    return a, b


def send(sock: socket.socket, header: dict[str, Any], fds: Sequence[int] = ()) -> None:
    """Send one message: the JSON header and, as SCM_RIGHTS, ``fds``."""
    data = json.dumps(header).encode()
    if len(data) > MAX_MESSAGE:
        raise HandoverError(f"message of {len(data)} bytes exceeds {MAX_MESSAGE}")
    if len(fds) > MAX_FDS:
        raise HandoverError(f"{len(fds)} fds exceed {MAX_FDS}")
    if fds:
        socket.send_fds(sock, [data], list(fds))
    else:
        sock.send(data)


def send_objects(sock: socket.socket, objects: Sequence[HandedObject]) -> None:
    """Send the objects (the sender keeps its own fds; close them or exit afterwards)."""
    manifest = [{"name": o.name, "kind": o.kind, "type": o.type} for o in objects]
    send(sock, {"ok": True, "objects": manifest}, [o.fd for o in objects])


def receive(sock: socket.socket) -> tuple[dict[str, Any], list[int]]:
    """Receive one message; raise HandoverError on EOF (the peer left without sending) or
    truncation, closing every fd that did arrive."""
    # Not socket.recv_fds: CPython 3.11's drops its flags argument, so MSG_CMSG_CLOEXEC
    # would be lost and the fds inheritable (tests/kernel/test_fdpass.py checks this).
    msg, ancdata, flags, _ = sock.recvmsg(
        MAX_MESSAGE, socket.CMSG_SPACE(MAX_FDS * 4), socket.MSG_CMSG_CLOEXEC
    )
    fds = array.array("i")
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    return _parse(msg, list(fds), flags)


def _parse(msg: bytes, fds: list[int], flags: int) -> tuple[dict[str, Any], list[int]]:
    try:
        if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
            raise HandoverError("hand-over message truncated")
        if not msg:
            raise HandoverError("the peer closed the socket without handing anything over")
        try:
            header = json.loads(msg)
        except ValueError as err:
            raise HandoverError(f"hand-over header is not JSON: {err}") from None
        if not isinstance(header, dict):
            raise HandoverError("hand-over header is not a JSON object")
    except BaseException:
        close_all(fds)
        raise
    return header, fds


def receive_objects(header: dict[str, Any], fds: list[int]) -> list[HandedObject]:
    """Match a received manifest to its fds and check each against the kernel.

    Closes every fd and raises HandoverError if the counts differ, a kind or type is not
    what the manifest says, or an fd is not a BPF object at all.
    """
    try:
        manifest = header.get("objects")
        if not isinstance(manifest, list) or len(manifest) != len(fds):
            n = len(manifest) if isinstance(manifest, list) else "no"
            raise HandoverError(f"manifest lists {n} objects but {len(fds)} fds arrived")
        out = []
        for entry, fd in zip(manifest, fds, strict=True):
            out.append(_checked(entry, fd))
        return out
    except BaseException:
        close_all(fds)
        raise


def _checked(entry: Any, fd: int) -> HandedObject:
    if not isinstance(entry, dict) or entry.get("kind") not in _FD_KINDS:
        raise HandoverError(f"bad manifest entry {entry!r}")
    name, kind, want = str(entry.get("name")), entry["kind"], entry.get("type")
    actual = bpf_syscall.fd_kind(fd)
    if actual != _FD_KINDS[kind]:
        raise HandoverError(f"{name}: expected a BPF {kind}, the fd is {actual}")
    got = bpf_syscall.map_info(fd).type if kind == "map" else bpf_syscall.prog_info(fd).type
    if got != want:
        raise HandoverError(f"{name}: expected BPF {kind} type {want}, the kernel says {got}")
    return HandedObject(name, kind, got, fd)


def close_all(fds: Sequence[int]) -> None:
    """Close fds, ignoring ones already closed."""
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
