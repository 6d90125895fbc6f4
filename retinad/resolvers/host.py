"""The "host" resolver: names endpoints from what the host itself knows.

Until a Docker or Kubernetes resolver knows better, an endpoint is either

* the host itself: any address configured on an interface of this network namespace
  -> Endpoint(name=<hostname>, workload_kind="host", workload_name=<hostname>);
* whatever sits behind a container veth (a veth whose peer is in another namespace)
  -> Endpoint(name=<the peer namespace's name in /run/netns, else "netns-<nsid>", else the
  interface name>, workload_kind="interface", workload_name=<host-side interface name>).

The index is fed by netlink link and address events (kernel/links.py) and every answer is
computed when an event arrives, so a lookup at scrape time is a dictionary read. Names of
peer namespaces come from kernel/netns.py (asked from our own namespace, never entered).
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
from collections.abc import Callable
from pathlib import Path

from retinad.kernel.interfaces import LinkInfo
from retinad.kernel.links import AddrEvent, LinkWatcher
from retinad.kernel.netns import named_netns_ids
from retinad.model import Endpoint
from retinad.resolvers.base import IPAddress, ResolverContext

DEFAULT_NETNS_DIR = Path("/run/netns")
"""Where ``ip netns add`` puts its named namespaces."""


class HostResolver:
    """Resolves the host's own addresses and its container veths (see module docstring)."""

    name = "host"

    def __init__(
        self,
        *,
        logger: logging.Logger | None = None,
        hostname: str | None = None,
        netns_dir: Path = DEFAULT_NETNS_DIR,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self._on_change = on_change or (lambda: None)
        self._log = logger or logging.getLogger("retinad.resolvers.host")
        self.hostname = hostname or socket.gethostname()
        self._host = Endpoint(
            namespace="", name=self.hostname, workload_kind="host", workload_name=self.hostname
        )
        self._netns_dir = netns_dir
        self._lock = threading.Lock()
        self._addrs: dict[IPAddress, set[int]] = {}
        self._veths: dict[int, Endpoint] = {}
        self._nsnames: dict[int, str] = {}
        self._watcher: LinkWatcher | None = None

    def start(self) -> None:
        self._watcher = LinkWatcher(
            on_link=self._on_link,
            on_link_removed=self._on_link_removed,
            on_addr=self._on_addr,
            logger=self._log,
            name="host-resolver",
        )
        self._watcher.start()

    def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None

    @property
    def alive(self) -> bool:
        return self._watcher is not None and self._watcher.alive

    @property
    def up(self) -> bool:
        """Netlink is the source: in sync whenever the watcher thread runs."""
        return self.alive

    def size(self) -> int:
        with self._lock:
            return len(self._veths) + (1 if self._addrs else 0)

    def by_ip(self, ip: IPAddress) -> Endpoint | None:
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        with self._lock:
            return self._host if self._addrs.get(ip) else None

    def by_ifindex(self, ifindex: int) -> Endpoint | None:
        with self._lock:
            return self._veths.get(ifindex)

    # --- netlink events (watcher thread) ----------------------------------------------

    def _on_link(self, link: LinkInfo) -> None:
        if not link.container_veth:
            with self._lock:
                self._veths.pop(link.ifindex, None)
            return
        assert link.link_netnsid is not None
        with self._lock:
            nsname = self._nsnames.get(link.link_netnsid)
        if nsname is None:
            fresh = named_netns_ids(self._netns_dir)
            with self._lock:
                self._nsnames = fresh
            nsname = fresh.get(link.link_netnsid)
        name = nsname or f"netns-{link.link_netnsid}"
        ep = Endpoint(namespace="", name=name, workload_kind="interface", workload_name=link.name)
        with self._lock:
            self._veths[link.ifindex] = ep
        self._on_change()

    def _on_link_removed(self, link: LinkInfo) -> None:
        with self._lock:
            self._veths.pop(link.ifindex, None)
            for ip in [ip for ip, idx in self._addrs.items() if link.ifindex in idx]:
                self._forget(ip, link.ifindex)
        self._on_change()

    def _on_addr(self, ev: AddrEvent) -> None:
        with self._lock:
            if ev.added:
                self._addrs.setdefault(ev.address, set()).add(ev.ifindex)
            else:
                self._forget(ev.address, ev.ifindex)
        self._on_change()

    def _forget(self, ip: IPAddress, ifindex: int) -> None:
        idx = self._addrs.get(ip)
        if idx is not None:
            idx.discard(ifindex)
            if not idx:
                del self._addrs[ip]


def create(ctx: ResolverContext) -> HostResolver:
    return HostResolver(logger=ctx.logger, on_change=ctx.on_change)
