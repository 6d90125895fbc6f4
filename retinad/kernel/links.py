"""Follow the kernel's interface and address changes, in one thread, from netlink events.

Retina polls the link list every 30 s; retinad subscribes to rtnetlink's link (and
optionally address) multicast groups, so a container's veth is known within milliseconds.
The event socket is bound *before* the initial dump, so nothing that happens in between is
lost (it may be seen twice, which the callbacks tolerate: they are idempotent).

The socket is a plain AF_NETLINK socket read with ``select`` and decoded with pyroute2's
rtnl marshal: pyroute2's IPRoute objects are tied to the thread that created them and
block in ``get()``, which a stop request could not interrupt. If the kernel drops events
(ENOBUFS, the receive buffer overflowed), the watcher dumps the link table again and
reports the difference, so the callbacks always converge on the truth. Bridge-family
(AF_BRIDGE) link messages are ignored: they describe a bridge port, not the interface, and
read as one they would change a container veth's role whenever a port joins or leaves.

A veth whose peer moves to another namespace gets no message of its own (only the peer's
RTM_DELLINK here, unless something then changes the veth, as Docker does by setting the
peer up). That RTM_DELLINK carries IFLA_NEW_NETNSID, the peer's new namespace: the
watcher then reports each veth that named the moved link as its peer again, with that
namespace id (the kernel sends the message before it switches the peer's namespace, so
reading the veth back at that moment could still show its peer here).

Callbacks run in the watcher thread; an exception in one is logged and the thread goes on.
``alive`` turns false only if the thread itself failed, which a plugin reports as unhealthy.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import select
import socket
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.rtnl import (
    RTM_DELADDR,
    RTM_DELLINK,
    RTM_NEWADDR,
    RTM_NEWLINK,
    RTMGRP_IPV4_IFADDR,
    RTMGRP_IPV6_IFADDR,
    RTMGRP_LINK,
)
from pyroute2.netlink.rtnl.marshal import MarshalRtnl

from retinad.kernel.interfaces import LinkInfo, link_from_msg

NETLINK_ROUTE = 0
RCVBUF = 4 << 20
"""Receive buffer (bytes): room for a burst of thousands of link events (mass container
start) before the kernel has to drop any."""


@dataclass(frozen=True)
class AddrEvent:
    """An address added to or removed from an interface of this namespace."""

    ifindex: int
    address: ipaddress.IPv4Address | ipaddress.IPv6Address
    added: bool


LinkCallback = Callable[[LinkInfo], None]
AddrCallback = Callable[[AddrEvent], None]


def addr_from_msg(msg: Any, *, added: bool) -> AddrEvent | None:
    """Build an AddrEvent from a pyroute2 ifaddrmsg (IFA_LOCAL, else IFA_ADDRESS)."""
    raw = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
    if not raw:
        return None
    try:
        address = ipaddress.ip_address(raw)
    except ValueError:
        return None
    return AddrEvent(ifindex=int(msg["index"]), address=address, added=added)


class LinkWatcher:
    """Reports every interface (and optionally address) of this network namespace.

    ``on_link`` gets each interface at start and on every change; ``on_link_removed`` gets
    the last known record of an interface that disappeared; ``on_addr`` (when given)
    gets the addresses at start and each change.
    """

    def __init__(
        self,
        *,
        on_link: LinkCallback,
        on_link_removed: LinkCallback,
        on_addr: AddrCallback | None = None,
        logger: logging.Logger,
        name: str = "links",
    ) -> None:
        self._on_link = on_link
        self._on_link_removed = on_link_removed
        self._on_addr = on_addr
        self._log = logger
        self._name = name
        self._links: dict[int, LinkInfo] = {}
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop_r, self._stop_w = -1, -1
        self._failed: BaseException | None = None
        self._marshal = MarshalRtnl()

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Subscribe, report the current state (in the caller's thread), then follow."""
        groups = RTMGRP_LINK
        if self._on_addr is not None:
            groups |= RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
        try:
            try:
                sock.setsockopt(socket.SOL_SOCKET, 33, RCVBUF)  # SO_RCVBUFFORCE (root)
            except OSError:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            sock.bind((0, groups))
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self._resync(initial=True)
        self._stop_r, self._stop_w = os.pipe()
        self._thread = threading.Thread(target=self._run, name=f"retinad-{self._name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and close the socket; safe to call twice."""
        if self._thread is not None:
            os.write(self._stop_w, b"x")
            self._thread.join(timeout=5)
            self._thread = None
        for fd in (self._stop_r, self._stop_w):
            if fd >= 0:
                os.close(fd)
        self._stop_r, self._stop_w = -1, -1
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    @property
    def alive(self) -> bool:
        """False once the watcher thread has died of an unexpected error."""
        return self._thread is not None and self._thread.is_alive() and self._failed is None

    def links(self) -> dict[int, LinkInfo]:
        """A snapshot of the interfaces known now, by ifindex."""
        with self._lock:
            return dict(self._links)

    # --- the thread ----------------------------------------------------------------------

    def _run(self) -> None:
        assert self._sock is not None
        try:
            while True:
                ready, _, _ = select.select([self._sock.fileno(), self._stop_r], [], [])
                if self._stop_r in ready:
                    return
                try:
                    data = self._sock.recv(1 << 20)
                except OSError as err:
                    if err.errno == errno.ENOBUFS:
                        self._log.warning("%s: netlink events were dropped; resyncing", self._name)
                        self._resync(initial=False)
                        continue
                    raise
                for msg in self._marshal.parse(data):
                    self._dispatch(msg)
        except BaseException as err:
            self._failed = err
            self._log.error("%s watcher stopped: %s", self._name, err, exc_info=err)

    def _dispatch(self, msg: Any) -> None:
        mtype = msg["header"]["type"]
        if mtype in (RTM_NEWLINK, RTM_DELLINK) and msg.get("family") == socket.AF_BRIDGE:
            # The bridge's own port notifications (master/nomaster, port state): a partial
            # view of the link without IFLA_LINK_NETNSID, and an RTM_DELLINK when a port
            # leaves the bridge while the interface lives on. The interface's own
            # (AF_UNSPEC) messages say everything about it; these say nothing new.
            return
        if mtype == RTM_NEWLINK:
            link = link_from_msg(msg)
            if link is not None:
                self._link_seen(link)
        elif mtype == RTM_DELLINK:
            with self._lock:
                gone = self._links.pop(int(msg["index"]), None)
            if gone is not None:
                self._call(self._on_link_removed, gone)
                moved_to = _new_netnsid(msg)
                if moved_to is not None:
                    self._peer_moved(gone.ifindex, moved_to)
        elif mtype in (RTM_NEWADDR, RTM_DELADDR) and self._on_addr is not None:
            ev = addr_from_msg(msg, added=mtype == RTM_NEWADDR)
            if ev is not None:
                self._call(self._on_addr, ev)

    def _link_seen(self, link: LinkInfo) -> None:
        with self._lock:
            self._links[link.ifindex] = link
        self._call(self._on_link, link)

    def _peer_moved(self, ifindex: int, netnsid: int) -> None:
        """Report each veth here whose peer ``ifindex`` moved to namespace ``netnsid``."""
        with self._lock:
            moved = [
                replace(link, link_netnsid=netnsid)
                for link in self._links.values()
                if link.kind == "veth"
                and link.link_netnsid is None
                and link.peer_ifindex == ifindex
            ]
        for link in moved:
            self._link_seen(link)

    def _resync(self, *, initial: bool) -> None:
        """Dump links (and addresses) and report them, plus what vanished since."""
        with IPRoute() as ipr:
            current = [link for msg in ipr.get_links() if (link := link_from_msg(msg))]
            addrs = list(ipr.get_addr()) if self._on_addr is not None else []
        with self._lock:
            vanished = [v for k, v in self._links.items() if k not in {x.ifindex for x in current}]
            for v in vanished:
                self._links.pop(v.ifindex, None)
        for v in vanished:
            self._call(self._on_link_removed, v)
        for link in current:
            self._link_seen(link)
        if self._on_addr is not None:
            for msg in addrs:
                ev = addr_from_msg(msg, added=True)
                if ev is not None:
                    self._call(self._on_addr, ev)
        if initial:
            self._log.debug("%s: %d interfaces at start", self._name, len(current))

    def _call(self, fn: Callable[[Any], None], arg: Any) -> None:
        try:
            fn(arg)
        except Exception as err:  # a callback bug must not stop interface tracking
            self._log.error("%s: handling %r failed: %s", self._name, arg, err, exc_info=err)


def _new_netnsid(msg: Any) -> int | None:
    """IFLA_NEW_NETNSID of an RTM_DELLINK: where the link moved (None: it was deleted).

    The kernel writes it in host byte order (nla_put_s32); pyroute2's table reads it as
    big-endian, so it is turned back here.
    """
    raw = msg.get_attr("IFLA_NEW_NETNSID")
    if raw is None:
        return None
    return int.from_bytes(int(raw).to_bytes(4, "big"), sys.byteorder, signed=True)


def default_route_ifindexes() -> frozenset[int]:
    """Interfaces that carry a default route (IPv4 or IPv6) in this network namespace.

    Asked only when a veth whose peer is in another namespace is first seen (see
    ``interfaces.role_of``), so one short netlink dump per new container veth.
    """
    from pyroute2 import IPRoute

    found: set[int] = set()
    with IPRoute() as ipr:
        for family in (socket.AF_INET, socket.AF_INET6):
            for route in ipr.get_default_routes(family=family):
                oif = route.get_attr("RTA_OIF")
                if oif is not None:
                    found.add(int(oif))
                multipath = route.get_attr("RTA_MULTIPATH") or []
                found.update(int(hop["oif"]) for hop in multipath if hop.get("oif"))
    return frozenset(found)
