"""Series hygiene on the real packetparser: owner changes, grace expiry, 5,000-endpoint churn.

The endpoints come from a real EndpointIndex (the index every API-backed resolver keeps),
fed directly by the test in place of Docker or Kubernetes events: what is tested is what
retinad does when an index changes, whatever the source.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import time
from collections.abc import Iterator

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from retinad.config.schema import (
    InterfaceSelection,
    MetricsSettings,
    PacketParserSettings,
    ResolverSettings,
)
from retinad.kernel.compile import find_bpf_dir
from retinad.model import Endpoint
from retinad.plugins.base import PluginContext
from retinad.plugins.packetparser import LedgerStats, PacketParser
from retinad.resolvers.base import IPAddress, ResolverChain
from retinad.resolvers.index import Claim, EndpointIndex
from tests.kernel.pp_helpers import ifindex, inject, inside, mac_of, samples, value, wait_for
from tests.netns import Netns, VethLink, veth_to

PKTS = "retinad_endpoint_forward_packets_total"
BYTES = "retinad_endpoint_forward_bytes_total"
ENTRIES = "retinad_map_entries"
EP_MAP = "packetparser_endpoint"
NO_HOST = InterfaceSelection(include=["rt-none"])
SETTINGS = PacketParserSettings(interfaces=NO_HOST, container_interfaces=True)


class IndexResolver:
    """A resolver that is only an EndpointIndex: the test plays the event source."""

    name = "index"

    def __init__(self, chain: ResolverChain) -> None:
        self.index = EndpointIndex(on_change=chain.notify_change)

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def by_ip(self, ip: IPAddress) -> Endpoint | None:
        return self.index.by_ip(ip)

    def by_ifindex(self, ifindex: int) -> Endpoint | None:
        return self.index.by_ifindex(ifindex)


def pod(name: str) -> Endpoint:
    return Endpoint(namespace="shop", name=name, workload_kind="Deployment", workload_name="web")


def labels(ep: Endpoint, direction: str = "egress") -> dict[str, str]:
    return {"direction": direction, "namespace": ep.namespace, "name": ep.name,
            "workload_kind": ep.workload_kind, "workload_name": ep.workload_name}  # fmt: skip


@pytest.fixture
def link() -> Iterator[VethLink]:
    host, container = Netns(), Netns()
    try:
        with inside(host):
            yield veth_to(container, host_ip="10.78.0.1", peer_ip="10.78.0.2")
    finally:
        container.close()
        host.close()


def start_plugin(grace: int, cap: int = 10000) -> tuple[PacketParser, IndexResolver]:
    chain = ResolverChain([])
    res = IndexResolver(chain)
    chain.resolvers.append(res)
    ctx = PluginContext(
        metrics=MetricsSettings(),
        resolver=chain,
        bpf_dir=find_bpf_dir(),
        logger=logging.getLogger("retinad.packetparser"),
        series=ResolverSettings(grace_period_seconds=grace, max_endpoint_series=cap),
    )
    pp = PacketParser(SETTINGS, ctx)
    pp.start()
    return pp, res


def stats(pp: PacketParser) -> LedgerStats:
    return pp.ledger_stats()[EP_MAP]


def frames(link: VethLink, sources: list[str], size: int = 100) -> list[bytes]:
    dst_mac = mac_of(None, link.host)
    udp = UDP(sport=1000, dport=9) / Raw(b"h" * size)
    return [bytes(Ether(dst=dst_mac) / IP(src=s, dst=link.host_ip) / udp) for s in sources]


def test_ip_handed_to_a_new_owner_keeps_old_counts_and_expires_them(link: VethLink) -> None:
    pp, res = start_plugin(grace=2)
    try:
        wait_for(lambda: ifindex(link.host) in pp.attached(), what="attached")
        ip = "10.78.5.5"
        old, new = pod("web-old"), pod("web-new")
        res.index.put("uid-old", Claim.of(old, [ipaddress.ip_address(ip)]))
        inject(link.ns, "eth0", frames(link, [ip] * 5))
        wait_for(lambda: value(samples(pp.collect()), PKTS, **labels(old)) == 5, what="5 old")
        assert value(samples(pp.collect()), ENTRIES, map="packetparser_endpoint") == 3

        # Kubernetes deletes the old pod and gives its IP to a new one. The sweeper (not a
        # scrape) takes the key out of the kernel map as soon as the index changes.
        res.index.remove("uid-old")
        res.index.put("uid-new", Claim.of(new, [ipaddress.ip_address(ip)]))
        wait_for(lambda: stats(pp).evicted == 1, what="the key freed by the sweeper")
        inject(link.ns, "eth0", frames(link, [ip] * 3))

        s = wait_for(
            lambda: (s := samples(pp.collect())) and value(s, PKTS, **labels(new)) == 3 and s,
            what="3 packets for the new owner",
        )
        assert value(s, PKTS, **labels(old)) == 5  # the old owner keeps exactly its count
        assert value(s, BYTES, **labels(old)) == 5 * 142
        assert value(s, BYTES, **labels(new)) == 3 * 142
        # After the grace period the old pod's series disappear; the new one's stay.
        s = wait_for(
            lambda: (s := samples(pp.collect())) and (PKTS, _key(labels(old))) not in s and s,
            timeout=5,
            what="old series gone after the grace period",
        )
        assert value(s, PKTS, **labels(new)) == 3
    finally:
        pp.stop()


def _key(lbl: dict[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(lbl.items()))


def rss_kib() -> int:
    with open(f"/proc/{os.getpid()}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_5000_short_lived_endpoints_stay_bounded(link: VethLink) -> None:
    """50 waves of 100 pods: each wave lives, sends one packet per pod, and dies.

    Bounded means: kernel keys never exceed one live wave plus one dying wave; series never
    exceed the live wave plus the waves that died within the grace period; memory does not
    grow with the number of endpoints churned through; and at the end nothing is left but
    the two overflow series.
    """
    grace = 1
    pp, res = start_plugin(grace=grace, cap=10000)
    try:
        wait_for(lambda: ifindex(link.host) in pp.attached(), what="attached")
        rss_after_warmup = 0
        peak_entries = 0
        died_at: list[float] = []
        for wave in range(50):
            ips = [f"10.{90 + wave // 25}.{wave % 25}.{i + 1}" for i in range(100)]
            for i, ip in enumerate(ips):
                ep = pod(f"p{wave}-{i}")
                res.index.put(f"w{wave}-{i}", Claim.of(ep, [ipaddress.ip_address(ip)]))
            inject(link.ns, "eth0", frames(link, ips, size=10))
            last = labels(pod(f"p{wave}-99"))
            wait_for(
                lambda last=last: value(samples(pp.collect()), PKTS, **last) == 1,  # type: ignore[misc]
                what=f"wave {wave} counted",
            )
            now = time.monotonic()
            s = samples(pp.collect())
            peak_entries = max(peak_entries, int(value(s, ENTRIES, map="packetparser_endpoint")))
            recent = sum(1 for t in died_at if now - t < grace + 0.5)
            assert stats(pp).series <= 2 + 100 * (1 + recent), (wave, recent)
            for i in range(100):
                res.index.remove(f"w{wave}-{i}")
            died_at.append(time.monotonic())
            if wave == 9:
                rss_after_warmup = rss_kib()
        rss_growth = rss_kib() - rss_after_warmup

        def drained() -> bool:
            s = samples(pp.collect())
            return stats(pp).series == 2 and value(s, ENTRIES, map=EP_MAP) == 2

        wait_for(drained, timeout=10, what="only the two overflow series and keys left")
        assert stats(pp).evicted == 5000
        assert stats(pp).bound_keys == 2
        assert peak_entries <= 2 + 100 * 2, peak_entries
        assert rss_growth < 8 * 1024, f"RSS grew {rss_growth} KiB over 40 waves"
    finally:
        pp.stop()


def test_cap_counts_series_and_warns_once(link: VethLink, caplog: pytest.LogCaptureFixture) -> None:
    """max_endpoint_series = 20: two endpoints (10 series each at worst) get series, the
    other three are counted as overflow, and one warning says so."""
    caplog.set_level(logging.WARNING, logger="retinad")
    pp, res = start_plugin(grace=300, cap=20)
    try:
        wait_for(lambda: ifindex(link.host) in pp.attached(), what="attached")
        ips = [f"10.78.7.{i}" for i in range(1, 6)]
        for i, ip in enumerate(ips):
            res.index.put(f"c{i}", Claim.of(pod(f"c{i}"), [ipaddress.ip_address(ip)]))
        inject(link.ns, "eth0", frames(link, ips))
        over = labels(Endpoint(namespace="", name="overflow", workload_kind="overflow",
                               workload_name="overflow"))  # fmt: skip
        s = wait_for(
            lambda: (s := samples(pp.collect())) and value(s, PKTS, **over) == 3 and s,
            what="3 packets counted as overflow",
            timeout=3,
        )
        named = [v for (n, ls), v in s.items() if n == PKTS and ("name", "overflow") not in ls]
        assert sorted(named) == [1, 1]
        assert value(s, "retinad_series_dropped_total", map=EP_MAP) == 3
        samples(pp.collect())
        warned = [r.getMessage() for r in caplog.records if "max_endpoint_series" in r.getMessage()]
        assert warned == [
            "map packetparser_endpoint: [resolvers] max_endpoint_series = 20 reached; new "
            "endpoints are counted under the overflow endpoint (3 refused so far; next "
            "warning in 300 s at most)"
        ]
    finally:
        pp.stop()
