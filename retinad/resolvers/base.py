"""The resolver contract and the chain that asks resolvers in the configured order.

A resolver answers from an in-memory index that it keeps current from events (netlink,
Docker events, Kubernetes watches); it never calls an API per packet or per scrape, so a
scrape costs the same whatever the resolvers are.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from retinad.config.schema import Settings
from retinad.model import Endpoint

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def normalize_ip(ip: IPAddress) -> IPAddress:
    """An IPv4-mapped IPv6 address is the IPv4 address (dual-stack sockets report those)."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


@dataclass(frozen=True)
class ResolverContext:
    """What a resolver gets: the whole config (kubernetes' scope reads [packetparser]),
    its logger, and the callback to call whenever its index changes."""

    settings: Settings
    logger: logging.Logger
    on_change: Callable[[], None]


class Resolver(Protocol):
    """Maps an IP or a host-side veth ifindex to the endpoint behind it.

    Implementations live in ``retinad/resolvers/<name>.py`` (``<name>`` as listed in
    ``config.schema.RESOLVER_NAMES``) and export ``create(ctx: ResolverContext) -> Resolver``;
    a module may add keyword-only arguments after ``ctx`` for tests (kubernetes' backoff).
    """

    name: str

    def start(self) -> None:
        """Start following the source. Must not fail because the source is absent: a
        resolver whose API is down keeps serving (``up`` False) and retries with backoff."""

    def stop(self) -> None:
        """Stop following events; safe to call twice."""

    def by_ip(self, ip: IPAddress) -> Endpoint | None:
        """The endpoint that owns ``ip``, or None."""

    def by_ifindex(self, ifindex: int) -> Endpoint | None:
        """The endpoint behind the host-side interface ``ifindex``, or None."""

    @property
    def up(self) -> bool:
        """Connected to its source with the index in sync (``retinad_resolver_up``)."""

    @property
    def alive(self) -> bool:
        """Its background thread runs (False stops the systemd watchdog pings)."""

    def size(self) -> int:
        """How many endpoints the index holds (``retinad_resolver_endpoints``)."""


class ResolverChain:
    """Asks each resolver in turn; the first answer wins, for every kind of question.

    ``endpoint(ip, ifindex)`` is the one lookup rule every plugin uses: each resolver, in
    the configured order, is asked about the interface the address was seen behind (a
    container veth) and then about the address, before the next resolver is asked
    anything. So with ``order = ["kubernetes", "host"]`` a pod's IP is the pod's even on a
    veth the host resolver names after its netns. Plugins that see no interface (drops)
    pass none, and the chain uses the container veth packetparser last saw the address
    behind (``note_container_addresses``), so forward and drop series name an address the
    same way.

    Resolvers call ``notify_change`` whenever their index changes; consumers (the series
    ledgers of packetparser and dropreason) wait with ``wait_change`` and re-attribute
    kernel map keys promptly instead of at the next scrape. A generation number rather
    than an Event, so several consumers each see every change.
    """

    name = "chain"

    def __init__(self, resolvers: Sequence[Resolver]) -> None:
        self.resolvers = list(resolvers)
        self._generation = 0
        self._cond = threading.Condition()
        self._behind: dict[IPAddress, int] = {}
        self._behind_reads = 0

    def notify_change(self) -> None:
        with self._cond:
            self._generation += 1
            self._cond.notify_all()

    @property
    def generation(self) -> int:
        with self._cond:
            return self._generation

    def wait_change(self, seen: int, timeout: float) -> int:
        """Block until the generation differs from ``seen`` or ``timeout``; return it."""
        with self._cond:
            self._cond.wait_for(lambda: self._generation != seen, timeout)
            return self._generation

    def start(self) -> None:
        for r in self.resolvers:
            r.start()

    def stop(self) -> None:
        for r in reversed(self.resolvers):
            r.stop()

    def note_container_addresses(self, behind: dict[IPAddress, int]) -> None:
        """Replace the table address -> container veth ifindex it was last counted on."""
        self._behind = {normalize_ip(ip): idx for ip, idx in behind.items()}
        self._behind_reads += 1

    @property
    def container_address_reads(self) -> int:
        """How many tables ``note_container_addresses`` has received: an address first
        seen (by a plugin without interfaces) before the latest table may not be in it yet."""
        return self._behind_reads

    def endpoint(self, ip: IPAddress, ifindex: int | None = None) -> Endpoint | None:
        """The one lookup rule (see the class docstring)."""
        ip = normalize_ip(ip)
        if ifindex is None:
            ifindex = self._behind.get(ip)
        for r in self.resolvers:
            ep = r.by_ifindex(ifindex) if ifindex is not None else None
            if ep is None:
                ep = r.by_ip(ip)
            if ep is not None:
                return ep
        return None

    def by_ip(self, ip: IPAddress) -> Endpoint | None:
        ip = normalize_ip(ip)
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

    @property
    def up(self) -> bool:
        return all(r.up for r in self.resolvers)

    @property
    def alive(self) -> bool:
        return all(r.alive for r in self.resolvers)

    def size(self) -> int:
        return sum(r.size() for r in self.resolvers)
