"""The "static" resolver: endpoints written in the config, for VMs and bare services.

``[[resolvers.static.endpoints]]`` entries map a CIDR (IPv4 or IPv6, or one address) to an
endpoint. The longest prefix wins, as in a routing table, so a /32 for one VM can sit
inside a /24 for its subnet. Lookup is one dictionary probe per distinct prefix length
present (at most 33 for IPv4 and 129 for IPv6, in practice a handful), longest first.

Nothing here changes after start: [resolvers] changes need a restart, like every resolver.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from types import MappingProxyType

from retinad.config.schema import StaticEndpoint
from retinad.model import Endpoint
from retinad.resolvers.base import IPAddress, ResolverContext, normalize_ip

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def endpoint_of(entry: StaticEndpoint) -> Endpoint:
    return Endpoint(
        namespace=entry.namespace,
        name=entry.name,
        workload_kind=entry.workload_kind,
        workload_name=entry.workload_name or entry.name,
        labels=MappingProxyType(dict(entry.labels)),
    )


class StaticResolver:
    """Longest-prefix match over the configured CIDRs."""

    name = "static"

    def __init__(self, entries: Sequence[StaticEndpoint]) -> None:
        # version -> prefix length -> network -> endpoint; lengths kept longest first
        self._tables: dict[int, dict[int, dict[Network, Endpoint]]] = {4: {}, 6: {}}
        for entry in entries:
            net = ipaddress.ip_network(entry.cidr, strict=True)  # validated by the loader
            self._tables[net.version].setdefault(net.prefixlen, {})[net] = endpoint_of(entry)
        self._lengths = {v: sorted(t, reverse=True) for v, t in self._tables.items()}
        self._count = len(entries)

    def start(self) -> None:
        """Nothing to follow: the index is complete at construction."""

    def stop(self) -> None:
        """Nothing to stop."""

    def by_ip(self, ip: IPAddress) -> Endpoint | None:
        ip = normalize_ip(ip)
        table = self._tables[ip.version]
        for plen in self._lengths[ip.version]:
            net = ipaddress.ip_network((ip, plen), strict=False)
            ep = table[plen].get(net)
            if ep is not None:
                return ep
        return None

    def by_ifindex(self, ifindex: int) -> Endpoint | None:
        return None

    @property
    def up(self) -> bool:
        return True

    @property
    def alive(self) -> bool:
        return True

    def size(self) -> int:
        return self._count


def create(ctx: ResolverContext) -> StaticResolver:
    return StaticResolver(ctx.settings.resolvers.static.endpoints)
