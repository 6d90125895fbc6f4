"""Network namespaces and veth pairs for tests: real kernel objects, removed afterwards.

Names are short and random (``rt`` + 6 hex) so parallel or leftover runs never collide,
and everything a test makes is deleted in ``close()`` even when the test fails.

The suite's one private-host fixture lives here too (tests/conftest.py offers it to every
test): ``host`` is a fresh namespace the test thread enters (``inside``), so "the host's
interfaces" mean only what the test made, and ``veth`` joins it to a fresh peer namespace.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def sh(
    *cmd: str, check: bool = True, input: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    """Run a command; on failure raise with its stderr in the message."""
    p = subprocess.run(cmd, input=input, capture_output=True, check=False)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} -> {p.returncode}: {p.stderr.decode().strip()}")
    return p


def unique(prefix: str = "rt") -> str:
    return prefix + secrets.token_hex(3)


@dataclass
class Netns:
    """A named network namespace with loopback up."""

    name: str = field(default_factory=unique)

    def __post_init__(self) -> None:
        sh("ip", "netns", "add", self.name)
        self.run("ip", "link", "set", "lo", "up")

    def run(
        self, *cmd: str, check: bool = True, input: bytes | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        return sh("ip", "netns", "exec", self.name, *cmd, check=check, input=input)

    def popen(self, cmd: Sequence[str], **kw: object) -> subprocess.Popen[bytes]:
        return subprocess.Popen(["ip", "netns", "exec", self.name, *cmd], **kw)  # type: ignore[call-overload]

    def close(self) -> None:
        sh("ip", "netns", "del", self.name, check=False)


@dataclass
class VethLink:
    """A veth pair: ``host`` in the root namespace (or ``host_ns``), ``peer`` in ``ns``."""

    ns: Netns
    host: str
    peer: str
    host_ip: str
    peer_ip: str
    host_ns: Netns | None = None

    def ifindex(self) -> int:
        base = ["ip", "netns", "exec", self.host_ns.name] if self.host_ns else []
        out = sh(*base, "cat", f"/sys/class/net/{self.host}/ifindex").stdout
        return int(out)


def veth_to(
    ns: Netns,
    *,
    host_ip: str,
    peer_ip: str,
    prefix: int = 24,
    host_ip6: str | None = None,
    peer_ip6: str | None = None,
    host_ns: Netns | None = None,
    host_name: str | None = None,
) -> VethLink:
    """Create a veth pair with one end in ``ns`` (named eth0) and the other in the root ns
    (or ``host_ns``), both up and addressed. IPv6 addresses are optional (nodad)."""
    host = host_name or unique("rth")
    tmp = unique("rtp")
    sh("ip", "link", "add", host, "type", "veth", "peer", "name", tmp)
    sh("ip", "link", "set", tmp, "netns", ns.name)
    ns.run("ip", "link", "set", tmp, "name", "eth0")
    ns.run("ip", "addr", "add", f"{peer_ip}/{prefix}", "dev", "eth0")
    ns.run("ip", "link", "set", "eth0", "up")
    if host_ns is not None:
        sh("ip", "link", "set", host, "netns", host_ns.name)
        h = host_ns.run
    else:
        h = sh  # type: ignore[assignment]
    h("ip", "addr", "add", f"{host_ip}/{prefix}", "dev", host)
    h("ip", "link", "set", host, "up")
    if host_ip6 and peer_ip6:
        h("ip", "-6", "addr", "add", f"{host_ip6}/64", "dev", host, "nodad")
        ns.run("ip", "-6", "addr", "add", f"{peer_ip6}/64", "dev", "eth0", "nodad")
    return VethLink(
        ns=ns, host=host, peer="eth0", host_ip=host_ip, peer_ip=peer_ip, host_ns=host_ns
    )


def delete_link(name: str) -> None:
    sh("ip", "link", "del", name, check=False)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextmanager
def inside(ns: Netns) -> Iterator[Netns]:
    """Run the calling thread (and what it starts) inside ``ns``; restore afterwards.

    setns() moves only the calling thread; threads and subprocesses it starts later
    inherit that namespace, which is how a plugin or daemon under test sees only ``ns``.
    """
    original = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{ns.name}", os.O_RDONLY)
    try:
        _setns(target)
        try:
            yield ns
        finally:
            _setns(original)
    finally:
        os.close(target)
        os.close(original)


HOST_IP = "10.88.0.1"
PEER_IP = "10.88.0.2"
"""The ``veth`` fixture's addresses (each test has its own namespaces: no clash)."""


@pytest.fixture
def host() -> Iterator[Netns]:
    """A private "host" namespace that the test thread runs in for the whole test."""
    h = Netns()
    try:
        with inside(h):
            yield h
    finally:
        h.close()


@pytest.fixture
def veth(host: Netns) -> Iterator[VethLink]:
    """A veth pair: ``host`` side HOST_IP in the private host namespace, the peer (eth0,
    PEER_IP) in a fresh namespace of its own."""
    c = Netns()
    try:
        yield veth_to(c, host_ip=HOST_IP, peer_ip=PEER_IP)
    finally:
        c.close()
