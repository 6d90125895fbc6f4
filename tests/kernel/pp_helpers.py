"""Helpers for packetparser's kernel tests: a private "host" namespace, the plugin, samples.

Every packetparser test runs the plugin inside a network namespace the test created and
entered (``host_netns``), so "the host's interfaces" and "every container veth" mean only
what the test made: the machine's own interfaces and other tests' veths are never seen,
let alone attached. setns() moves the calling thread; threads the plugin starts later and
every subprocess inherit that namespace.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

from prometheus_client.metrics_core import Metric
from pyroute2 import IPRoute

from retinad.config.schema import MetricsSettings, PacketParserSettings
from retinad.kernel import bpf_syscall
from retinad.kernel.compile import find_bpf_dir
from retinad.kernel.tcx import BPF_TCX_EGRESS, BPF_TCX_INGRESS, tcx_prog_ids
from retinad.model import Endpoint
from retinad.plugins.base import PluginContext
from retinad.plugins.packetparser import PacketParser
from retinad.resolvers.base import IPAddress, ResolverChain
from tests.daemon_proc import wait_for
from tests.netns import Netns, inside

__all__ = ["inside", "wait_for"]  # re-exported: tests/netns.py and the suite's poll helper

T = TypeVar("T")


def ifindex(name: str) -> int:
    """ifindex of ``name`` in the current namespace (sysfs would show the root's)."""
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=name)
    if not found:
        raise LookupError(f"no interface {name}")
    return int(found[0])


class StaticResolver:
    """A resolver over fixed tables (the real protocol, no mocking of our own code)."""

    name = "static-test"

    def __init__(
        self,
        ips: dict[IPAddress, Endpoint] | None = None,
        ifindexes: dict[int, Endpoint] | None = None,
    ) -> None:
        self.ips = ips or {}
        self.ifindexes = ifindexes or {}

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def by_ip(self, ip: IPAddress) -> Endpoint | None:
        return self.ips.get(ip)

    def by_ifindex(self, ifindex: int) -> Endpoint | None:
        return self.ifindexes.get(ifindex)


def make_plugin(
    settings: PacketParserSettings,
    *,
    resolver: Any = None,
    metrics: MetricsSettings | None = None,
    resolvers: list[Any] | None = None,
) -> PacketParser:
    """The plugin over a chain of ``resolvers`` (in order), or of ``resolver`` alone."""
    ctx = PluginContext(
        metrics=metrics or MetricsSettings(),
        resolver=ResolverChain(resolvers or [resolver or StaticResolver()]),
        bpf_dir=find_bpf_dir(),
        logger=logging.getLogger("retinad.packetparser"),
    )
    return PacketParser(settings, ctx)


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(families: Iterable[Metric]) -> Samples:
    """(sample name, sorted labels) -> value for everything the families hold."""
    out: Samples = {}
    for fam in families:
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(smp: Samples, metric: str, **labels: str) -> float:
    """One sample's value; 0 if absent (a counter that has not appeared yet)."""
    return smp.get((metric, tuple(sorted(labels.items()))), 0.0)


def tcx_count(ifidx: int) -> tuple[int, int]:
    """How many tcx programs sit on (ingress, egress) of an interface (none where the
    kernel has no tcx, before 6.6: asked by a program query, as the attacher asks)."""
    from retinad.kernel.attach import tcx_supported

    if not tcx_supported():
        return 0, 0
    return len(tcx_prog_ids(ifidx, BPF_TCX_INGRESS)), len(tcx_prog_ids(ifidx, BPF_TCX_EGRESS))


def tc_filters(dev: str, hook: str) -> list[str]:
    """``tc filter show dev DEV ingress|egress`` lines that describe a filter."""
    from tests.netns import sh

    out = sh("tc", "filter", "show", "dev", dev, hook).stdout.decode()
    return [line for line in out.splitlines() if "handle" in line]


UDP_SENDER = """
import socket, sys
dst, port, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
for _ in range(n):
    s.sendto(b"x" * size, (dst, port))
"""


def send_udp(ns: Netns | None, dst: str, n: int, size: int, port: int = 9999) -> None:
    """Send n UDP datagrams of ``size`` payload bytes from ``ns`` (None: the current ns)."""
    cmd = ("python3", "-c", UDP_SENDER, dst, str(port), str(n), str(size))
    if ns is None:
        from tests.netns import sh

        sh(*cmd)
    else:
        ns.run(*cmd)


def bpf_dir() -> Path:
    return find_bpf_dir()


SKB_CTX_SIZE = 192
"""sizeof(struct __sk_buff); gso_segs is at 164, gso_size at 176."""


def prog_test_run(prog_fd: int, frame: bytes, *, gso_segs: int = 0, gso_size: int = 0) -> int:
    """Run a sched_cls program once on ``frame`` (BPF_PROG_TEST_RUN); returns its verdict.

    The skb the kernel builds has len = len(frame), Ethernet header included, on lo.
    """
    ctx = (ctypes.c_uint8 * SKB_CTX_SIZE)()
    ctypes.c_uint32.from_buffer(ctx, 164).value = gso_segs
    ctypes.c_uint32.from_buffer(ctx, 176).value = gso_size
    retval = bpf_syscall.test_run(prog_fd, frame, ctx=bytes(ctx))
    return ctypes.c_int32(retval).value


INJECTOR = """
import socket, struct, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((sys.argv[1], 0))
data = sys.stdin.buffer.read()
off = 0
while off < len(data):
    (n,) = struct.unpack_from("!I", data, off)
    s.send(data[off + 4 : off + 4 + n])
    off += 4 + n
"""


def inject(ns: Netns, ifname: str, frames: Iterable[bytes]) -> None:
    """Send raw Ethernet frames out of ``ifname`` in ``ns`` through an AF_PACKET socket."""
    import struct

    payload = b"".join(struct.pack("!I", len(f)) + f for f in frames)
    ns.run("python3", "-c", INJECTOR, ifname, input=payload)


def mac_of(ns: Netns | None, ifname: str) -> str:
    from tests.netns import sh

    cmd = ("cat", f"/sys/class/net/{ifname}/address")
    out = ns.run(*cmd).stdout if ns is not None else sh("ip", "-br", "link", "show", ifname).stdout
    if ns is not None:
        return out.decode().strip()
    return out.decode().split()[2]
