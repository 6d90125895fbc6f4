"""Handshake and request latency measured by packetparser's programs on real veths.

The lab (tests/kernel/latency_lab.py): a client and a server namespace behind veths the
plugin attaches to as containers'. The server namespace holds its SYN-ACKs for a known time
with an iptables NFQUEUE rule and a user-space holder (fnfqueue), drops SYNs to one port,
and its server answers requests after a known delay; the histograms must put every sample
in the bucket the delay implies, with exact counts.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from retinad.config.schema import (
    InterfaceSelection,
    LatencySettings,
    LatencyTarget,
    MetricsSettings,
    PacketParserSettings,
)
from retinad.kernel import bpf_syscall
from retinad.kernel.compile import find_bpf_dir
from retinad.plugins.base import PluginContext
from retinad.plugins.packetparser import PacketParser
from retinad.resolvers.base import ResolverChain
from tests.kernel.latency_lab import (
    CLIENT,
    EDGES,
    HANDSHAKE,
    HOLDER,
    NO_RESPONSE,
    REQUEST,
    SERVER,
    Lab,
    buckets,
    expect,
    latency_lab,
    series_of,
    started,
)
from tests.kernel.pp_helpers import StaticResolver, samples, value, wait_for

TIMEOUT = 2
"""[latency] timeout_seconds: above the 1.3 s request, below the 3 s SYN retransmission."""


@pytest.fixture
def lab() -> Iterator[Lab]:
    with latency_lab() as lab:
        yield lab


def plugin_for(targets: list[LatencyTarget]) -> PacketParser:
    ctx = PluginContext(
        metrics=MetricsSettings(),
        resolver=ResolverChain([StaticResolver()]),
        bpf_dir=find_bpf_dir(),
        logger=logging.getLogger("retinad.packetparser"),
        latency=LatencySettings(timeout_seconds=TIMEOUT, targets=targets),
    )
    settings = PacketParserSettings(interfaces=InterfaceSelection(include=["rt-none"]))
    return PacketParser(settings, ctx)


def test_handshake_held_20ms_and_150ms_lands_in_its_bucket(lab: Lab) -> None:
    fast, slow, other = (int(p) for p in lab.start(lab.server, SERVER, "0", "0", "0").split())
    lab.hold_synacks(fast, 1, 0.020)
    lab.hold_synacks(slow, 2, 0.150)
    lab.hold_synacks(other, 3, 0.020)
    plugin = plugin_for([
        LatencyTarget("fast", "10.79.2.2", fast),
        LatencyTarget("slow", "10.79.2.0/24", slow),
        LatencyTarget("elsewhere", "10.79.9.0/24"),
    ])  # fmt: skip
    started(plugin)
    try:
        for _ in range(3):
            assert lab.connect(fast) == "ok"
            assert lab.connect(slow) == "ok"
        assert lab.connect(other) == "ok"  # same address, a port no target names
        smp = samples(plugin.collect())
    finally:
        plugin.stop()
    fast_l = {"target": "fast", "direction": "egress"}
    slow_l = {"target": "slow", "direction": "egress"}
    assert buckets(smp, HANDSHAKE, **fast_l) == expect(3, "0.02")
    assert buckets(smp, HANDSHAKE, **slow_l) == expect(3, "0.1")
    assert value(smp, HANDSHAKE + "_count", **fast_l) == 3
    assert 0.060 < value(smp, HANDSHAKE + "_sum", **fast_l) < 0.090
    assert 0.450 < value(smp, HANDSHAKE + "_sum", **slow_l) < 0.600
    # the connection to `other` is in no series; nothing was measured in the other direction
    for d in ("ingress", "egress"):
        assert value(smp, HANDSHAKE + "_count", target="elsewhere", direction=d) == 0
    assert value(smp, HANDSHAKE + "_count", target="fast", direction="ingress") == 0
    assert value(smp, REQUEST + "_count", **fast_l) == 0
    assert {dict(s).get("target") for s in series_of(smp, HANDSHAKE)} == {
        "fast",
        "slow",
        "elsewhere",
    }
    for t in ("fast", "slow", "elsewhere"):
        for stage in ("handshake", "request"):
            assert value(smp, NO_RESPONSE, target=t, stage=stage) == 0
    cap = value(smp, "retinad_map_capacity", map="latency_pending")
    assert cap == LatencySettings().max_pending
    # every handshake ended: what stays pending are the (closed) connections' CONN entries
    assert value(smp, "retinad_map_entries", map="latency_pending") <= 6


def test_dropped_syns_count_once_per_attempt(lab: Lab) -> None:
    (port,) = (int(p) for p in lab.start(lab.server, SERVER, "0").split())
    lab.server.run("iptables", "-A", "INPUT", "-p", "tcp", "--dport", str(port),
                   "--syn", "-j", "DROP")  # fmt: skip
    plugin = plugin_for([LatencyTarget("blackhole", "10.79.2.2", port)])
    started(plugin)
    key = {"target": "blackhole", "stage": "handshake"}
    try:
        # SYNs at 0, 1 and 3 s: the sweep counts the attempt after 2 s, and the
        # retransmission at 3 s (same sequence number) must not start a new one.
        attempt = lab.client.popen(
            [sys.executable, "-c", CLIENT, lab.server_ip, str(port), "4.5"],
            stdout=subprocess.PIPE,
        )
        lab.procs.append(attempt)
        wait_for(lambda: value(samples(plugin.collect()), NO_RESPONSE, **key) == 1,
                 timeout=TIMEOUT + 3, what="the first attempt counted")  # fmt: skip
        assert attempt.stdout is not None
        assert attempt.stdout.readline().startswith(b"failed")
        smp = samples(plugin.collect())
        assert value(smp, NO_RESPONSE, **key) == 1
        assert lab.connect(port, timeout=2.5).startswith("failed")  # a second attempt
        smp = wait_for(
            lambda: (s := samples(plugin.collect())) and value(s, NO_RESPONSE, **key) == 2 and s,
            timeout=TIMEOUT + 3,
            what="the second attempt counted",
        )
        assert value(samples(plugin.collect()), NO_RESPONSE, **key) == 2
    finally:
        plugin.stop()
    assert value(smp, HANDSHAKE + "_count", target="blackhole", direction="egress") == 0


def test_request_answered_after_50ms_and_1300ms(lab: Lab) -> None:
    (port,) = (int(p) for p in lab.start(lab.server, SERVER, "0.05").split())
    (slow_port,) = (int(p) for p in lab.start(lab.server, SERVER, "1.3").split())
    plugin = plugin_for([LatencyTarget("api", "10.79.2.2")])
    started(plugin)
    try:
        # keep-alive: three requests on one connection, each measured
        assert lab.connect(port, "a", "b", "c") == "ok"
        assert lab.connect(slow_port, "slow") == "ok"
        smp = samples(plugin.collect())
    finally:
        plugin.stop()
    labels = {"target": "api", "direction": "egress"}
    got = buckets(smp, REQUEST, **labels)
    want = {le: 0.0 for le in EDGES}
    for i, le in enumerate(EDGES):
        want[le] = (3.0 if i > EDGES.index("0.05") else 0.0) + (
            1.0 if i > EDGES.index("1") else 0.0
        )
    assert got == want
    assert value(smp, HANDSHAKE + "_count", **labels) == 2
    assert value(smp, NO_RESPONSE, target="api", stage="request") == 0


def test_ipv6_requests_and_handshakes_to_a_v6_network(lab: Lab) -> None:
    """The same over IPv6: the target is a /64, the payload length comes from the IPv6
    header; an IPv4 connection to the same server is no sample of it."""
    (port,) = (int(p) for p in lab.start(lab.server, SERVER, "0.05").split())
    plugin = plugin_for([LatencyTarget("v6", "fd79:2::/64")])
    started(plugin)
    try:
        out = (
            lab.client.run(sys.executable, "-c", CLIENT, "fd79:2::2", str(port), "5", "a", "b")
            .stdout.decode()
            .strip()
        )
        assert out == "ok"
        assert lab.connect(port, "v4") == "ok"  # 10.79.2.2: not in the v6 target
        smp = samples(plugin.collect())
    finally:
        plugin.stop()
    labels = {"target": "v6", "direction": "egress"}
    assert value(smp, HANDSHAKE + "_count", **labels) == 1
    assert buckets(smp, REQUEST, **labels) == expect(2, "0.05")
    assert value(smp, NO_RESPONSE, target="v6", stage="request") == 0


class ApiServers(StaticResolver):
    """A resolver that knows the API servers, as the kubernetes resolver does (same
    method, same shape: (address, port) pairs)."""

    def __init__(self, servers: list[tuple[ipaddress.IPv4Address, int]]) -> None:
        super().__init__()
        self.servers = servers

    def apiserver_addresses(self) -> list[tuple[ipaddress.IPv4Address, int]]:
        return list(self.servers)


def test_apiserver_becomes_a_target_with_retina_names(lab: Lab) -> None:
    """No [latency] targets: the resolver's API servers are the target "apiserver", kept
    current at scrape time; retina naming gives Retina's names in milliseconds."""
    port, other = (int(p) for p in lab.start(lab.server, SERVER, "0.05", "0.05").split())
    servers = ApiServers([])
    ctx = PluginContext(
        metrics=MetricsSettings(naming="retina"),
        resolver=ResolverChain([servers]),  # type: ignore[list-item]
        bpf_dir=find_bpf_dir(),
        logger=logging.getLogger("retinad.packetparser"),
        latency=LatencySettings(timeout_seconds=TIMEOUT),
    )
    plugin = PacketParser(PacketParserSettings(interfaces=InterfaceSelection(include=["x"])), ctx)
    started(plugin)
    try:
        assert lab.connect(port, "before") == "ok"  # no API server known yet: unmeasured
        servers.servers = [(ipaddress.IPv4Address(lab.server_ip), port)]
        samples(plugin.collect())  # the scrape that picks the API server up
        assert lab.connect(port, "a") == "ok"
        assert lab.connect(other, "b") == "ok"  # the API server's address, another port
        smp = samples(plugin.collect())
    finally:
        plugin.stop()
    hs = "networkobservability_adv_node_apiserver_tcp_handshake_latency"
    req = "networkobservability_adv_node_apiserver_latency"
    assert value(smp, hs + "_count") == 1
    assert value(smp, req + "_count") == 1
    assert value(smp, req + "_bucket", le="50") == 0
    assert value(smp, req + "_bucket", le="100") == 1
    assert 50 < value(smp, req + "_sum") < 100
    assert (
        value(smp, "networkobservability_adv_node_apiserver_no_response", no_response="request")
        == 0
    )
    assert not series_of(smp, REQUEST)  # the apiserver's series are Retina's only


def test_a_target_connecting_in_is_measured_as_ingress(lab: Lab) -> None:
    """The target is the client: the client namespace serves, the server namespace (a
    target by address, any port) connects to it; its SYN-ACK held 20 ms."""
    (port,) = (int(p) for p in lab.start(lab.client, SERVER, "0").split())
    assert lab.start(lab.client, HOLDER, "4", "0.020") == "ready"
    lab.client.run("iptables", "-A", "OUTPUT", "-p", "tcp", "--sport", str(port),
                   "--tcp-flags", "SYN,ACK", "SYN,ACK",
                   "-j", "NFQUEUE", "--queue-num", "4")  # fmt: skip
    plugin = plugin_for([LatencyTarget("caller", "10.79.2.2")])
    started(plugin)
    try:
        for _ in range(2):
            out = lab.server.run(sys.executable, "-c", CLIENT, "10.79.1.2", str(port), "5", "x")
            assert out.stdout.decode().strip() == "ok"
        smp = samples(plugin.collect())
    finally:
        plugin.stop()
    inbound = {"target": "caller", "direction": "ingress"}
    assert buckets(smp, HANDSHAKE, **inbound) == expect(2, "0.02")
    assert value(smp, HANDSHAKE + "_count", target="caller", direction="egress") == 0
    assert value(smp, REQUEST + "_count", **inbound) == 2


def map_names(ids: set[int]) -> set[str]:
    """The kernel's names of these maps (those freed meanwhile are skipped)."""
    names = set()
    for map_id in ids:
        try:
            fd = bpf_syscall.map_fd_by_id(map_id)
        except OSError:
            continue
        try:
            names.add(bpf_syscall.map_info(fd).name)
        finally:
            os.close(fd)
    return names


def held_map_ids() -> set[int]:
    """Ids of the BPF maps this process holds an fd of (/proc/self/fdinfo's map_id)."""
    ids = set()
    for fdinfo in Path("/proc/self/fdinfo").iterdir():
        try:
            text = fdinfo.read_text()
        except OSError:  # an fd closed meanwhile
            continue
        for line in text.splitlines():
            if line.startswith("map_id:"):
                ids.add(int(line.split()[1]))
    return ids


def test_latency_is_compiled_out_when_nothing_can_be_a_target(lab: Lab) -> None:
    """No [[latency.targets]] and no resolver that knows the API servers: the programs
    carry no latency maps and no per-packet latency work; the families stay empty."""
    before = held_map_ids()
    plugin = started(plugin_for([]))
    try:
        # the maps this process holds: other processes on the machine (a daemon with a
        # latency target) may create lat_* maps meanwhile
        created = map_names(held_map_ids() - before)
        (port,) = (int(p) for p in lab.start(lab.server, SERVER, "0").split())
        assert lab.connect(port, "a") == "ok"
        smp = samples(plugin.collect())
    finally:
        plugin.stop()
    assert {"pp_iface", "pp_endpoint", "pp_unparsed"} <= created
    assert {n for n in created if n.startswith("lat_")} == set()
    assert ("retinad_map_capacity", (("map", "latency_pending"),)) not in smp
    assert not [name for name, _ in smp if "latency" in name or name == NO_RESPONSE]
    # the packets were counted as ever: endpoint keys beyond the two overflow keys
    assert value(smp, "retinad_map_entries", map="packetparser_endpoint") > 2
