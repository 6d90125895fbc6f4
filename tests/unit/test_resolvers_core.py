"""The resolver core: EndpointIndex, the chain, Follower/Backoff, static, untrusted labels."""

from __future__ import annotations

import ipaddress
import logging
import subprocess
import threading

import pytest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from retinad.config.load import parse_config
from retinad.model import MAX_LABEL_VALUE, Endpoint
from retinad.resolvers.base import ResolverChain
from retinad.resolvers.follow import Backoff, Follower
from retinad.resolvers.index import Claim, EndpointIndex
from retinad.resolvers.registry import build_chain
from retinad.resolvers.static import StaticResolver

ip = ipaddress.ip_address
A = Endpoint("shop", "a", "container", "a")
B = Endpoint("shop", "b", "container", "b")


def test_index_put_replace_remove_and_change_signals() -> None:
    changes: list[int] = []
    idx = EndpointIndex(on_change=lambda: changes.append(1))
    idx.put("a", Claim.of(A, [ip("10.0.0.1"), ip("fd00::1")], [7]))
    assert idx.by_ip(ip("10.0.0.1")) == A
    assert idx.by_ip(ip("::ffff:10.0.0.1")) == A  # IPv4-mapped is the IPv4 address
    assert idx.by_ip(ip("fd00::1")) == A
    assert idx.by_ifindex(7) == A
    idx.put("a", Claim.of(A, [ip("10.0.0.1"), ip("fd00::1")], [7]))  # unchanged: no signal
    assert len(changes) == 1
    idx.put("a", Claim.of(A, [ip("10.0.0.2")]))  # replaced: old addresses gone
    assert idx.by_ip(ip("10.0.0.1")) is None and idx.by_ifindex(7) is None
    assert idx.by_ip(ip("10.0.0.2")) == A
    idx.remove("a")
    idx.remove("a")
    assert idx.by_ip(ip("10.0.0.2")) is None and len(idx) == 0
    assert len(changes) == 3


def test_index_newest_claim_wins_and_the_older_one_answers_again() -> None:
    idx = EndpointIndex()
    idx.put("old", Claim.of(A, [ip("10.0.0.9")]))
    idx.put("new", Claim.of(B, [ip("10.0.0.9")]))
    assert idx.by_ip(ip("10.0.0.9")) == B
    idx.remove("new")
    assert idx.by_ip(ip("10.0.0.9")) == A


def test_index_replace_all_resyncs_and_keeps_precedence_of_unchanged_owners() -> None:
    idx = EndpointIndex()
    idx.put("old", Claim.of(A, [ip("10.0.0.9")]))
    idx.put("new", Claim.of(B, [ip("10.0.0.9")]))
    idx.put("gone", Claim.of(A, [ip("10.0.0.5")]))
    idx.replace_all({"old": Claim.of(A, [ip("10.0.0.9")]), "new": Claim.of(B, [ip("10.0.0.9")])})
    assert idx.by_ip(ip("10.0.0.9")) == B
    assert idx.by_ip(ip("10.0.0.5")) is None
    assert set(idx.owners()) == {"old", "new"}


def test_chain_asks_in_order_and_counts_generations() -> None:
    first = StaticResolver(
        parse_config(_static("10.1.0.0/16", "first"), source="t").resolvers.static.endpoints
    )
    second = StaticResolver(
        parse_config(_static("10.0.0.0/8", "second"), source="t").resolvers.static.endpoints
    )
    chain = ResolverChain([first, second])
    assert chain.by_ip(ip("10.1.2.3")).name == "first"  # type: ignore[union-attr]
    assert chain.by_ip(ip("10.2.2.3")).name == "second"  # type: ignore[union-attr]
    assert chain.by_ip(ip("192.0.2.1")) is None
    g = chain.generation
    t = threading.Timer(0.05, chain.notify_change)
    t.start()
    assert chain.wait_change(g, timeout=5) == g + 1
    assert chain.up and chain.alive and chain.size() == 2


def _static(cidr: str, name: str) -> str:
    return f'[[resolvers.static.endpoints]]\ncidr = "{cidr}"\nname = "{name}"\n'


def test_static_longest_prefix_v4_and_v6_and_defaults() -> None:
    text = """
[resolvers]
order = ["static"]
[[resolvers.static.endpoints]]
cidr = "10.0.0.0/8"
name = "corp"
[[resolvers.static.endpoints]]
cidr = "10.3.0.0/16"
name = "dc3"
namespace = "infra"
[[resolvers.static.endpoints]]
cidr = "10.3.7.7/32"
name = "db-primary"
workload_kind = "vm"
workload_name = "postgres"
labels = { team = "data" }
[[resolvers.static.endpoints]]
cidr = "fd00::/16"
name = "v6-corp"
[[resolvers.static.endpoints]]
cidr = "fd00:3::/64"
name = "v6-dc3"
[[resolvers.static.endpoints]]
cidr = "2001:db8::1"
name = "one-v6-host"
"""
    settings = parse_config(text, source="t")
    chain = build_chain(settings, logging.getLogger("t"))
    (r,) = chain.resolvers
    assert r.by_ip(ip("10.3.7.7")) == Endpoint(
        "", "db-primary", "vm", "postgres", labels={"team": "data"}
    )
    assert r.by_ip(ip("10.3.7.8")) == Endpoint("infra", "dc3", "static", "dc3")
    assert r.by_ip(ip("10.4.0.1")) == Endpoint("", "corp", "static", "corp")
    assert r.by_ip(ip("::ffff:10.4.0.1")) == Endpoint("", "corp", "static", "corp")
    assert r.by_ip(ip("11.0.0.1")) is None
    assert r.by_ip(ip("fd00:3::42")).name == "v6-dc3"  # type: ignore[union-attr]
    assert r.by_ip(ip("fd00:4::42")).name == "v6-corp"  # type: ignore[union-attr]
    assert r.by_ip(ip("2001:db8::1")).name == "one-v6-host"  # type: ignore[union-attr]
    assert r.by_ip(ip("2001:db8::2")) is None
    assert r.by_ifindex(1) is None
    assert r.size() == 6


def test_backoff_doubles_with_jitter_up_to_the_cap_and_resets() -> None:
    b = Backoff(initial=0.5, maximum=4)
    delays = [b.next() for _ in range(6)]
    for d, ceiling in zip(delays, [0.5, 1, 2, 4, 4, 4], strict=True):
        assert ceiling / 2 <= d <= ceiling
    b.reset()
    assert b.next() <= 0.5


def test_follower_retries_failed_sessions_and_stops_promptly() -> None:
    calls: list[int] = []
    release = threading.Event()

    def session(f: Follower) -> None:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("source down")
        f.mark_up()
        release.wait()  # "follow events" until stop interrupts

    f = Follower(
        "t",
        session,
        logger=logging.getLogger("t"),
        interrupt=release.set,
        backoff=Backoff(initial=0.01, maximum=0.02),
    )
    f.start()
    assert f.wait_up(5)
    assert f.up and f.alive and f.sessions == 3
    f.stop()
    assert not f.up and not f.alive


def test_untrusted_label_text_is_exported_verbatim_and_parses() -> None:
    evil = 'a"b\\c\nd}\t# HELP x y\n名前 ünïcødé 🙂'
    ep = Endpoint(evil, "x\udcff\x00y", "container", "z" * 1000)
    assert ep.namespace == evil
    assert ep.name == "x\ufffd\ufffdy"
    assert len(ep.workload_name) == MAX_LABEL_VALUE and ep.workload_name.endswith("\u2026")
    fam = CounterMetricFamily("retinad_t", "t", labels=["namespace", "name", "workload_name"])
    fam.add_metric([ep.namespace, ep.name, ep.workload_name], 1)

    class One:
        def collect(self) -> list[CounterMetricFamily]:
            return [fam]

    text = generate_latest(One()).decode()  # type: ignore[arg-type]
    (parsed,) = [f for f in text_string_to_metric_families(text) if f.name == "retinad_t"]
    assert parsed.samples[0].labels["namespace"] == evil
    # Prometheus' own parser agrees: promtool lints without a parse error.
    res = subprocess.run(
        ["promtool", "check", "metrics"], input=text.encode(), capture_output=True, check=False
    )
    assert res.returncode == 0, res.stderr.decode() + res.stdout.decode()


def test_build_chain_passes_the_change_callback() -> None:
    settings = parse_config('[resolvers]\norder = ["static", "host"]\n', source="t")
    chain = build_chain(settings, logging.getLogger("t"))
    assert [r.name for r in chain.resolvers] == ["static", "host"]
    # A real change the host resolver sees (a container veth appears, in a namespace of
    # this test's own) moves the chain's generation: the callback is wired.
    from tests.kernel.pp_helpers import inside
    from tests.netns import Netns, veth_to

    host_ns, container = Netns(), Netns()
    try:
        with inside(host_ns):
            chain.start()
            try:
                g = chain.generation
                veth_to(container, host_ip="10.82.0.1", peer_ip="10.82.0.2")
                assert chain.wait_change(g, timeout=10) > g
            finally:
                chain.stop()
    finally:
        container.close()
        host_ns.close()


@pytest.mark.parametrize("order", [["docker"], ["containerd"], ["kubernetes"]])
def test_every_configurable_resolver_has_a_module(order: list[str]) -> None:
    from retinad.resolvers.registry import RESOLVER_MODULES

    assert set(RESOLVER_MODULES) == {"host", "docker", "containerd", "kubernetes", "static"}
    import importlib

    module = importlib.import_module(RESOLVER_MODULES[order[0]])
    assert callable(module.create)


class _Veths:
    """A resolver that knows only host-side interfaces (as the host resolver names veths)."""

    name = "veths"
    up = alive = True

    def __init__(self, table: dict[int, Endpoint]) -> None:
        self.table = table

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def size(self) -> int:
        return len(self.table)

    def by_ip(self, ip: object) -> Endpoint | None:
        return None

    def by_ifindex(self, ifindex: int) -> Endpoint | None:
        return self.table.get(ifindex)


def test_chain_names_a_veth_by_the_first_resolver_in_order_that_knows_it_or_its_address() -> None:
    by_address = StaticResolver(
        parse_config(_static("10.244.0.0/16", "pod"), source="t").resolvers.static.endpoints
    )
    veth = Endpoint("", "netns-1", "interface", "veth1")
    # [resolvers] order = ["static", "veths"]: the address answer of the first wins.
    chain = ResolverChain([by_address, _Veths({7: veth})])
    assert chain.endpoint(ip("10.244.1.2"), 7).name == "pod"  # type: ignore[union-attr]
    assert chain.endpoint(ip("192.0.2.1"), 7) == veth  # unknown address
    assert chain.endpoint(ip("192.0.2.1"), 8) is None
    # The other order: the interface answer of the first wins.
    assert ResolverChain([_Veths({7: veth}), by_address]).endpoint(ip("10.244.1.2"), 7) == veth
