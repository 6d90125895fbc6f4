"""Resolver order on container veth traffic: the first resolver in order that knows the
interface or the address names it (ResolverChain.endpoint), for forward and drop series."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

import pytest

from retinad.config.schema import InterfaceSelection, PacketParserSettings
from retinad.model import Endpoint
from retinad.resolvers.host import HostResolver
from tests.daemon_proc import wait_for
from tests.kernel.pp_helpers import (
    StaticResolver,
    ifindex,
    inside,
    make_plugin,
    samples,
    send_udp,
    value,
)
from tests.netns import Netns, VethLink, veth_to

PKTS = "retinad_endpoint_forward_packets_total"
POD = Endpoint(namespace="shop", name="web-1", workload_kind="Pod", workload_name="web")


@pytest.fixture
def veth() -> Iterator[VethLink]:
    h, c = Netns(), Netns()
    try:
        with inside(h):
            yield veth_to(c, host_ip="10.86.0.1", peer_ip="10.86.0.2")
    finally:
        c.close()
        h.close()


@pytest.mark.parametrize("first", ["ip-resolver", "host"])
def test_first_resolver_in_order_names_veth_traffic(veth: VethLink, first: str) -> None:
    """An API resolver (kubernetes, docker, static: it knows the pod's IP) ahead of host
    names the pod; host ahead of it names the netns. Never the other way round."""
    host = HostResolver(hostname="testhost")
    pods = StaticResolver(ips={ipaddress.ip_address(veth.peer_ip): POD})
    order = [pods, host] if first == "ip-resolver" else [host, pods]
    host.start()
    settings = PacketParserSettings(
        interfaces=InterfaceSelection(include=["rt-none"]), container_interfaces=True
    )
    pp = make_plugin(settings, resolvers=order)
    pp.start()
    try:
        wait_for(lambda: ifindex(veth.host) in pp.attached(), what="veth attached")
        wait_for(lambda: host.by_ifindex(ifindex(veth.host)), what="host resolver knows it")
        send_udp(veth.ns, veth.host_ip, 30, 100)
        if first == "ip-resolver":
            want = {"namespace": "shop", "name": "web-1", "workload_kind": "Pod",
                    "workload_name": "web"}  # fmt: skip
        else:
            want = {"namespace": "", "name": veth.ns.name, "workload_kind": "interface",
                    "workload_name": veth.host}  # fmt: skip
        wait_for(
            lambda: value(samples(pp.collect()), PKTS, direction="egress", **want) == 30,
            what=f"30 packets under {want['name']}",
        )
        s = samples(pp.collect())
        total = sum(v for (n, _), v in s.items() if n == PKTS)
        assert total == 30, "all of them under that one name"
        # Drops carry no interface: the chain names the address by the veth it was counted
        # behind, so a drop series says the same name as the forward series.
        named = pp.ctx.resolver.endpoint(ipaddress.ip_address(veth.peer_ip))
        assert named is not None and named.name == want["name"]
    finally:
        pp.stop()
        host.stop()
