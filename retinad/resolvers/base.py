"""The resolver contract and the chain that asks resolvers in the configured order.

A resolver answers from an in-memory index that it keeps current from events (netlink,
Docker events, Kubernetes watches); it never calls an API per packet or per scrape, so a
scrape costs the same whatever the resolvers are.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Protocol

from retinad.model import Endpoint

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class Resolver(Protocol):
    """Maps an IP or a host-side veth ifindex to the endpoint behind it."""

    name: str

    def start(self) -> None:
        """Build the initial index and start following events."""

    def stop(self) -> None:
        """Stop following events; safe to call twice."""

    def by_ip(self, ip: IPAddress) -> Endpoint | None:
        """The endpoint that owns ``ip`` on this host, or None."""

    def by_ifindex(self, ifindex: int) -> Endpoint | None:
        """The endpoint behind the host-side interface ``ifindex``, or None."""


class ResolverChain:
    """Asks each resolver in turn; the first answer wins."""

    name = "chain"

    def __init__(self, resolvers: Sequence[Resolver]) -> None:
        self.resolvers = list(resolvers)

    def start(self) -> None:
        for r in self.resolvers:
            r.start()

    def stop(self) -> None:
        for r in reversed(self.resolvers):
            r.stop()

    def by_ip(self, ip: IPAddress) -> Endpoint | None:
        for r in self.resolvers:
            ep = r.by_ip(ip)
            if ep is not None:
                return ep
        return None

    def by_ifindex(self, ifindex: int) -> Endpoint | None:
        for r in self.resolvers:
            ep = r.by_ifindex(ifindex)
            if ep is not None:
                return ep
        return None
