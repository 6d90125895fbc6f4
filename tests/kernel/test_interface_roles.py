"""One role per interface for its whole life: bridge ports joining and leaving, containers
started and stopped around a running one, never move its attachment or its series."""

from __future__ import annotations

import logging
import sys

import pytest

from retinad.config.schema import InterfaceSelection, PacketParserSettings
from retinad.kernel.interfaces import Role
from retinad.resolvers.host import HostResolver
from tests.daemon_proc import wait_for
from tests.kernel.pp_helpers import ifindex, make_plugin, samples, send_udp, value
from tests.netns import Netns, delete_link, sh, veth_to

PKTS = "retinad_endpoint_forward_packets_total"


def test_bridge_ports_and_neighbour_containers_never_move_a_veth(
    host: Netns, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="retinad")
    made: list[Netns] = []
    resolver = HostResolver(hostname="testhost")
    resolver.start()
    sh("ip", "link", "add", "rtbr0", "type", "bridge")
    sh("ip", "link", "set", "rtbr0", "up")
    pp = make_plugin(PacketParserSettings(), resolver=resolver)  # the default selection
    pp.start()
    try:
        made.append(Netns())
        c = veth_to(made[0], host_ip="10.85.0.1", peer_ip="10.85.0.2")
        idx = ifindex(c.host)
        wait_for(lambda: pp.attached().get(idx) == (c.host, Role.CONTAINER), what="container")
        out = {"direction": "egress", "namespace": "", "name": made[0].name,
               "workload_kind": "interface", "workload_name": c.host}  # fmt: skip
        send_udp(c.ns, c.host_ip, 5, 100)
        wait_for(lambda: value(samples(pp.collect()), PKTS, **out) == 5, what="5 packets")
        caplog.clear()
        # Ports join and leave the bridge; neighbour containers come and go (on the bridge).
        for n in range(1, 4):
            sh("ip", "link", "set", c.host, "master", "rtbr0")
            ns = Netns()
            made.append(ns)
            other = veth_to(ns, host_ip=f"10.85.{n}.1", peer_ip=f"10.85.{n}.2")
            sh("ip", "link", "set", other.host, "master", "rtbr0")
            wait_for(lambda o=other: ifindex(o.host) in pp.attached(), what="neighbour")
            sh("ip", "link", "set", c.host, "nomaster")
            sh("ip", "link", "set", other.host, "nomaster")
            delete_link(other.host)
            wait_for(lambda o=other: o.host not in {n for n, _ in pp.attached().values()},
                     what="neighbour gone")  # fmt: skip
            assert pp.attached()[idx] == (c.host, Role.CONTAINER)
            send_udp(c.ns, c.host_ip, 5, 100)
        wait_for(lambda: value(samples(pp.collect()), PKTS, **out) == 20, what="20 packets")
        s = samples(pp.collect())
        egress = [v for (n, ls), v in s.items() if n == PKTS and ("direction", "egress") in ls
                  and ("name", "overflow") not in ls]  # fmt: skip
        assert egress == [20], "one series, every packet under the container's name"
        moved = [r.getMessage() for r in caplog.records if c.host in r.getMessage()]
        assert moved == [], "the running container's veth was never re-attached or 'gone'"
        assert pp.attach_errors() == {}
        assert value(s, "retinad_attach_errors_total", reason="no_such_interface") == 0
    finally:
        pp.stop()
        resolver.stop()
        for ns in made:
            ns.close()
        sh("ip", "link", "del", "rtbr0", check=False)


def test_unmatched_include_warns_keeps_watching_and_info_names_the_interface(
    host: Netns, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="retinad")
    settings = PacketParserSettings(
        interfaces=InterfaceSelection(include=["rtlate*"]), container_interfaces=False
    )
    pp = make_plugin(settings)
    pp.start()
    made = Netns()
    try:
        warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert warned == [
            "[packetparser.interfaces] include pattern 'rtlate*' matches no interface; "
            "watching for one to appear"
        ]
        link = veth_to(made, host_ip="10.84.0.1", peer_ip="10.84.0.2", host_name="rtlate0")
        idx = ifindex(link.host)
        wait_for(lambda: idx in pp.attached(), what="the late interface attached")
        s = samples(pp.collect())
        info = {ls: v for (n, ls), v in s.items() if n == "retinad_interface_info"}
        want = (("attach_mode", "tcx"), ("ifindex", str(idx)), ("interface", "rtlate0"),
                ("role", "host"))  # fmt: skip
        assert info == {want: 1.0}
    finally:
        pp.stop()
        made.close()


ROLE_INSIDE = """
import sys
from pyroute2 import IPRoute
from retinad.config.schema import InterfaceSelection
from retinad.kernel.interfaces import link_from_msg, role_of
from retinad.kernel.links import default_route_ifindexes
uplinks = default_route_ifindexes()
with IPRoute() as ipr:
    for msg in ipr.get_links():
        link = link_from_msg(msg)
        if link is not None and link.name == "eth0":
            role = role_of(link, InterfaceSelection(), container_interfaces=True,
                           uplink=link.ifindex in uplinks)
            print(link.container_veth, role.value if role else None)
"""


@pytest.mark.parametrize(("default_route", "expected"), [(True, "host"), (False, "container")])
def test_inside_a_container_its_uplink_veth_is_a_host_interface(
    default_route: bool, expected: str
) -> None:
    """retinad inside a container (or a systemd/LXC machine): eth0 is a veth whose peer is in
    the parent namespace. Carrying the default route, it is the machine's own uplink, counted
    as host traffic; without it, it reads as any container's veth."""
    ns = Netns()
    try:
        veth_to(ns, host_ip="10.251.7.1", peer_ip="10.251.7.2")
        if default_route:
            ns.run("ip", "route", "add", "default", "via", "10.251.7.1")
        out = ns.run(sys.executable, "-c", ROLE_INSIDE).stdout
        assert out.decode().split() == ["True", expected]
    finally:
        ns.close()
