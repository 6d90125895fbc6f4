"""Network namespaces and veth pairs for tests: real kernel objects, removed afterwards.

Names are short and random (``rt`` + 6 hex) so parallel or leftover runs never collide,
and everything a test makes is deleted in ``close()`` even when the test fails.
"""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field


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
