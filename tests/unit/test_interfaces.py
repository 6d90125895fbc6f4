"""Interface selection (kernel/interfaces.py) on literal link records."""

from __future__ import annotations

import pytest
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

from retinad.config.schema import InterfaceSelection
from retinad.kernel.interfaces import LinkInfo, Role, link_from_msg, role_of, select_interfaces


def link(name: str, ifindex: int = 10, *, kind: str = "", up: bool = True,
         loopback: bool = False, netnsid: int | None = None) -> LinkInfo:  # fmt: skip
    return LinkInfo(ifindex=ifindex, name=name, kind=kind, up=up, loopback=loopback,
                    link_netnsid=netnsid)  # fmt: skip


LO = link("lo", 1, loopback=True)
ETH0 = link("eth0", 2)
DOWN = link("eth1", 3, up=False)
BRIDGE = link("docker0", 4, kind="bridge")
CVETH = link("veth1a2b3c", 5, kind="veth", netnsid=0)
LOCAL_VETH = link("vethlocal", 6, kind="veth")  # peer in this namespace
ALL = [LO, ETH0, DOWN, BRIDGE, CVETH, LOCAL_VETH]


def test_default_selects_up_non_loopback_host_interfaces_and_container_veths() -> None:
    chosen = select_interfaces(ALL, InterfaceSelection(), container_interfaces=True)
    assert chosen == {2: Role.HOST, 4: Role.HOST, 5: Role.CONTAINER, 6: Role.HOST}


def test_container_interfaces_off_leaves_container_veths_alone() -> None:
    chosen = select_interfaces(ALL, InterfaceSelection(), container_interfaces=False)
    assert 5 not in chosen and chosen[2] is Role.HOST


def test_include_globs_pick_host_interfaces_even_down_or_a_container_veth() -> None:
    sel = InterfaceSelection(include=["eth*", "veth1a2b3c"])
    chosen = select_interfaces(ALL, sel, container_interfaces=True)
    assert chosen == {2: Role.HOST, 3: Role.HOST, 5: Role.HOST}


def test_include_that_matches_nothing_still_takes_container_veths() -> None:
    sel = InterfaceSelection(include=["nothing-matches"])
    assert select_interfaces(ALL, sel, container_interfaces=True) == {5: Role.CONTAINER}


def test_exclude_trims_host_interfaces_only() -> None:
    sel = InterfaceSelection(exclude=["veth*", "docker?"])
    assert select_interfaces(ALL, sel, container_interfaces=True) == {
        2: Role.HOST,
        5: Role.CONTAINER,
    }
    star = InterfaceSelection(exclude=["*"])
    assert select_interfaces(ALL, star, container_interfaces=True) == {5: Role.CONTAINER}
    assert select_interfaces(ALL, star, container_interfaces=False) == {}


@pytest.mark.parametrize(
    ("name", "glob"),
    [
        ("ibr10:30", "ibr10:30"),
        ("eth0.100", "eth0.*"),
        ("🙂", "🙂"),
        ("x" * 15, "x*"),
        ("[a]", "[[]a]"),
    ],
)
def test_odd_names_match_their_globs(name: str, glob: str) -> None:
    sel = InterfaceSelection(include=[glob])
    assert role_of(link(name), sel, container_interfaces=False) is Role.HOST
    assert role_of(link(name + "x"), sel, container_interfaces=False) is None or "*" in glob


def test_link_from_msg_reads_kind_flags_and_peer_netnsid() -> None:
    msg = ifinfmsg()
    msg["index"] = 7
    msg["flags"] = 0x1
    msg["attrs"] = [
        ("IFLA_IFNAME", "veth9"),
        ("IFLA_LINK_NETNSID", 3),
        ("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_KIND", "veth")]}),
    ]
    msg.encode()
    parsed = ifinfmsg(msg.data)
    parsed.decode()
    info = link_from_msg(parsed)
    assert info == LinkInfo(ifindex=7, name="veth9", kind="veth", up=True, loopback=False,
                            link_netnsid=3)  # fmt: skip
    assert info.container_veth


def test_link_from_msg_without_a_name_is_none() -> None:
    msg = ifinfmsg()
    msg["index"] = 7
    msg["attrs"] = []
    assert link_from_msg(msg) is None


@pytest.mark.parametrize(
    ("ifi_type", "l3"),
    [(1, False), (772, False), (0xFFFE, True), (768, True), (778, True), (823, True)],
    ids=["ether", "loopback", "none-tun-wireguard", "ipip", "gre", "ip6gre"],
)
def test_link_type_decides_whether_packets_start_at_the_ip_header(ifi_type: int, l3: bool) -> None:
    msg = ifinfmsg()
    msg["index"] = 9
    msg["ifi_type"] = ifi_type
    msg["attrs"] = [("IFLA_IFNAME", "x0")]
    msg.encode()
    parsed = ifinfmsg(msg.data)
    parsed.decode()
    info = link_from_msg(parsed)
    assert info is not None and info.l3 is l3
