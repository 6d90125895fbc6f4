"""Network namespaces other than our own: the one way retinad looks into them.

Three resolvers need to know about namespaces they do not run in: the host resolver names
a container veth after the named namespace (``/run/netns/<name>``) its peer lives in;
docker finds a container's host-side veths; containerd needs a task namespace's addresses
and veth peers. They all go through this module, and it follows one rule:

**Ask from here whenever the kernel can answer from here; enter a namespace only for what
is visible only inside it, and then only in a fresh thread that does that one read and
exits.**

* From our own namespace, ``RTM_GETNSID`` on an opened nsfs file (``/proc/<pid>/ns/net``
  or ``/run/netns/<name>``) gives the id our namespace has for it, and a link dump gives
  each veth's ``IFLA_LINK_NETNSID``: together that maps a namespace to the host-side veths
  whose peer is there (``nsid_of``, ``veths_by_peer_nsid``) with no switch at all.
* A namespace's own addresses can only be dumped from a netlink socket created inside it.
  ``read_netns`` starts a thread that calls ``setns(fd, CLONE_NEWNET)`` (allowed in a
  multithreaded process for network namespaces, and it changes only the calling thread),
  opens its rtnetlink socket there (a socket stays in the namespace it was made in), dumps,
  closes and exits. That thread is never reused, so nothing has to be restored and no
  other thread ever runs in a foreign namespace; the caller does not move.
* Never fork to enter one (pyroute2's ``NetNS`` / ``netns=``): about 7-10 ms per namespace,
  and a fork next to gRPC's and the daemon's threads is unsafe.

Everything here runs only when a resolver's source reports a change, never from a lookup
or a scrape.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from pyroute2 import IPRoute

from retinad.kernel.interfaces import link_from_msg

CLONE_NEWNET = 0x40000000
IFF_LOOPBACK = 0x8

NOT_ASSIGNED = -1
"""RTM_GETNSID's answer for a namespace ours has no id for (no link between them)."""

OUR_NETNS = "/proc/self/ns/net"
"""The process's own network namespace: the one every retinad thread stays in."""

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
NsKey = tuple[int, int]
"""A network namespace's identity: (st_dev, st_ino) of its nsfs file."""

T = TypeVar("T")

_libc = ctypes.CDLL(None, use_errno=True)


def pid_netns_path(pid: int) -> str:
    return f"/proc/{pid}/ns/net"


@contextmanager
def opened(path: str | Path) -> Iterator[int]:
    """An O_RDONLY fd on a namespace file, closed on exit (OSError if it cannot be opened:
    the process is gone, or the name was deleted)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)


def ns_key(fd: int) -> NsKey:
    st = os.fstat(fd)
    return (st.st_dev, st.st_ino)


def path_key(path: str | Path) -> NsKey:
    st = os.stat(path)
    return (st.st_dev, st.st_ino)


def nsid_of(ipr: IPRoute, fd: int) -> int:
    """The id ``ipr``'s namespace has for the namespace of ``fd``, or NOT_ASSIGNED."""
    res = ipr.get_netnsid(fd=fd)
    nsid = res.get("nsid") if res else None
    return nsid if isinstance(nsid, int) and nsid >= 0 else NOT_ASSIGNED


def nsid_of_pid(ipr: IPRoute, pid: int) -> int:
    """``nsid_of`` for ``pid``'s network namespace; NOT_ASSIGNED if the process is gone."""
    try:
        fd = os.open(pid_netns_path(pid), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return NOT_ASSIGNED
    try:
        return nsid_of(ipr, fd)
    finally:
        os.close(fd)


def veths_by_peer_nsid(ipr: IPRoute) -> dict[int, list[int]]:
    """Peer namespace id -> the ifindexes of ``ipr``'s veths whose peer is there. The dump
    also makes the kernel assign an id to every such peer namespace."""
    table: dict[int, list[int]] = {}
    for msg in ipr.get_links():
        link = link_from_msg(msg)
        if link is not None and link.container_veth and link.link_netnsid is not None:
            table.setdefault(link.link_netnsid, []).append(link.ifindex)
    return table


def named_netns_ids(netns_dir: Path) -> dict[int, str]:
    """nsid (as our namespace numbers it) -> name, for the named namespaces in
    ``netns_dir`` (``ip netns``'s /run/netns). A namespace with no id here yet (no veth
    links us) is not listed; a file that is not a namespace, or vanished, is skipped."""
    names: dict[int, str] = {}
    try:
        entries = sorted(os.listdir(netns_dir))
    except OSError:
        return names
    with IPRoute() as ipr:
        for name in entries:
            try:
                with opened(netns_dir / name) as fd:
                    nsid = nsid_of(ipr, fd)
            except Exception:  # not a namespace file (netlink says so), or it vanished
                continue
            if nsid != NOT_ASSIGNED:
                names[nsid] = name
    return names


def run_inside(ns_fd: int, work: Callable[[], T], *, name: str = "netns-reader") -> T:
    """``work()`` in a fresh thread that has entered the namespace ``ns_fd``; its result
    or its exception is handed back to the caller, which never changes namespace."""
    result: list[T] = []
    failure: list[BaseException] = []

    def body() -> None:
        try:
            if _libc.setns(ns_fd, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns: {os.strerror(err)}")
            result.append(work())
        except BaseException as err:  # handed to the caller's thread
            failure.append(err)

    worker = threading.Thread(target=body, name=name, daemon=True)
    worker.start()
    worker.join()
    if failure:
        raise failure[0]
    return result[0]


@dataclass(frozen=True)
class NetnsView:
    """What a namespace holds that names it from the outside."""

    ips: frozenset[IPAddress]
    """Its addresses: not loopback, not IPv6 link-local (every namespace has its own
    fe80:: addresses, which name nothing outside their link)."""
    ifindexes: frozenset[int]
    """Host-side ifindexes of its veths whose peer is in our namespace."""


def read_netns(ns_fd: int, our_fd: int) -> NetnsView:
    """Addresses and host-side veth peers of the namespace ``ns_fd``, read from inside
    (``run_inside``). ``our_fd`` is our own namespace: the id it has *inside* ``ns_fd``
    marks the veths whose other end we see (their IFLA_LINK is then our ifindex)."""
    return run_inside(ns_fd, lambda: _dump_inside(our_fd))


def _dump_inside(our_fd: int) -> NetnsView:
    """Runs in the thread that entered the namespace; the socket is created there."""
    with IPRoute() as ipr:
        our_nsid = nsid_of(ipr, our_fd)
        loopbacks: set[int] = set()
        ifindexes: set[int] = set()
        for link in ipr.get_links():
            if int(link["flags"]) & IFF_LOOPBACK:
                loopbacks.add(int(link["index"]))
                continue
            info = link.get_attr("IFLA_LINKINFO")
            kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
            peer = link.get_attr("IFLA_LINK")
            nsid = link.get_attr("IFLA_LINK_NETNSID")
            if (
                kind == "veth"
                and isinstance(peer, int)
                and peer > 0
                and our_nsid != NOT_ASSIGNED
                and nsid == our_nsid
            ):
                ifindexes.add(peer)
        ips: set[IPAddress] = set()
        for msg in ipr.get_addr():
            if int(msg["index"]) in loopbacks:
                continue
            raw = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
            if not raw:
                continue
            ip = ipaddress.ip_address(raw)
            if ip.is_loopback or (isinstance(ip, ipaddress.IPv6Address) and ip.is_link_local):
                continue
            ips.add(ip)
    return NetnsView(frozenset(ips), frozenset(ifindexes))
