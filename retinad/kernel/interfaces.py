"""Which interfaces get packetparser's programs, and in which role.

Pure functions over ``LinkInfo`` records: ``link_from_msg`` turns a netlink RTM_NEWLINK
message into one, ``select_interfaces`` decides from the [packetparser] settings. Reading
netlink is links.py's job and attaching is attach.py's, so this module is unit-tested with
literal records.

Roles:
  host       the host's own interfaces: counted per interface (basic series) and per
             endpoint, with tc ingress = ingress.
  container  the host side of a veth whose peer lives in another network namespace
             (IFLA_LINK_NETNSID is set): tc ingress there is the container's egress.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from retinad.config.schema import InterfaceSelection

IFF_UP = 0x1
IFF_LOOPBACK = 0x8
L3_LINK_TYPES = frozenset({0xFFFE, 519, 768, 769, 776, 778, 823})
"""ARPHRD_* of links whose packets start at the network header, with no MAC header:
NONE (tun, WireGuard), RAWIP, TUNNEL (ipip), TUNNEL6, SIT, IPGRE, IP6GRE
(include/uapi/linux/if_arp.h)."""


class Role(Enum):
    """How an interface's traffic is attributed (see the module docstring)."""

    HOST = "host"
    CONTAINER = "container"


@dataclass(frozen=True)
class LinkInfo:
    """The facts about one network interface that selection and naming need."""

    ifindex: int
    name: str
    kind: str
    """IFLA_INFO_KIND ("veth", "bridge", ...) or "" for a physical device."""
    up: bool
    """Administratively up (IFF_UP)."""
    loopback: bool
    link_netnsid: int | None
    """For a veth: the namespace id of its peer's namespace when that differs from ours."""
    l3: bool = False
    """Its packets carry no MAC header (``L3_LINK_TYPES``): parsed from the IP header."""
    peer_ifindex: int | None = None
    """IFLA_LINK: for a veth, its peer's ifindex (in the peer's namespace)."""

    @property
    def container_veth(self) -> bool:
        """A veth whose other end is in another network namespace (a container's)."""
        return self.kind == "veth" and self.link_netnsid is not None


def link_from_msg(msg: Any) -> LinkInfo | None:
    """Build a LinkInfo from a pyroute2 ifinfmsg; None if it lacks a name (partial message)."""
    name = msg.get_attr("IFLA_IFNAME")
    if not name:
        return None
    kind = ""
    linkinfo = msg.get_attr("IFLA_LINKINFO")
    if linkinfo is not None:
        kind = linkinfo.get_attr("IFLA_INFO_KIND") or ""
    flags = int(msg["flags"])
    netnsid = msg.get_attr("IFLA_LINK_NETNSID")
    peer = msg.get_attr("IFLA_LINK")
    return LinkInfo(
        ifindex=int(msg["index"]),
        name=str(name),
        kind=str(kind),
        up=bool(flags & IFF_UP),
        loopback=bool(flags & IFF_LOOPBACK),
        link_netnsid=None if netnsid is None else int(netnsid),
        l3=int(msg.get("ifi_type") or 1) in L3_LINK_TYPES,
        peer_ifindex=None if peer is None else int(peer),
    )


def _matches(name: str, globs: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, g) for g in globs)


def role_of(
    link: LinkInfo,
    selection: InterfaceSelection,
    *,
    container_interfaces: bool,
    uplink: bool = False,
) -> Role | None:
    """The role ``link`` gets under these settings, or None to leave it alone.

    Host interfaces: a name matched by include (even a container veth: the operator named
    it), or with no include every interface that is up, not loopback and not a container
    veth; exclude then removes names from those (CONFIG.md: "removed from what include
    selected"). Container veths are containers when container_interfaces is on, whatever
    exclude says: exclude trims host interfaces only.

    ``uplink``: the link carries one of this namespace's default routes. A veth whose peer
    is elsewhere is then the namespace's own way out, not a container's: that is retinad
    running inside a container or a systemd/LXC machine, where eth0 is a veth to the
    parent's bridge. No host ever routes its default through a container's veth.
    """
    container_veth = link.container_veth and not uplink
    if selection.include:
        host = _matches(link.name, selection.include)
    else:
        host = link.up and not link.loopback and not container_veth
    if host and not _matches(link.name, selection.exclude):
        return Role.HOST
    if container_interfaces and container_veth and not host:
        return Role.CONTAINER
    return None


def select_interfaces(
    links: Iterable[LinkInfo], selection: InterfaceSelection, *, container_interfaces: bool
) -> dict[int, Role]:
    """ifindex -> role for every link that should carry the programs."""
    chosen: dict[int, Role] = {}
    for link in links:
        role = role_of(link, selection, container_interfaces=container_interfaces)
        if role is not None:
            chosen[link.ifindex] = role
    return chosen


def describe(links: Mapping[int, LinkInfo], chosen: Mapping[int, Role]) -> str:
    """A short human list for logs: "eth0 (host), veth1a2b (container)"."""
    parts = [
        f"{links[i].name if i in links else i} ({role.value})" for i, role in sorted(chosen.items())
    ]
    return ", ".join(parts) or "none"
