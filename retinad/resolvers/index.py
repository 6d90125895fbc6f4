"""One in-memory index per resolver: owner -> the addresses and interfaces it claims.

Resolvers learn about owners (a container, a task, a pod, a static entry) from a list and
then from events; each event becomes ``put`` or ``remove`` of that owner's whole claim, and
a relist becomes one ``replace_all``. Lookups are dictionary reads under a lock, so the
scrape path never waits on an API.

An address can be claimed by two owners at once (Kubernetes reuses a deleted pod's IP
before the delete event of the old pod arrives; ``--net=container:`` shares one netns).
The newest claim answers; when it goes, the older claim answers again.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from retinad.model import Endpoint
from retinad.resolvers.base import IPAddress, normalize_ip

K = TypeVar("K")


@dataclass(frozen=True)
class Claim:
    """What one owner answers for."""

    endpoint: Endpoint
    ips: frozenset[IPAddress] = frozenset()
    ifindexes: frozenset[int] = frozenset()

    @classmethod
    def of(
        cls, endpoint: Endpoint, ips: Iterable[IPAddress] = (), ifindexes: Iterable[int] = ()
    ) -> Claim:
        return cls(endpoint, frozenset(normalize_ip(i) for i in ips), frozenset(ifindexes))


class EndpointIndex:
    """Thread-safe owner -> Claim map with reverse lookups by IP and by ifindex."""

    def __init__(self, on_change: Callable[[], None] | None = None) -> None:
        self._on_change = on_change
        self._lock = threading.Lock()
        self._claims: dict[str, Claim] = {}
        self._seq: dict[str, int] = {}  # owner -> when it last (re)claimed, newest wins
        self._next = 0
        self._by_ip: dict[IPAddress, set[str]] = {}
        self._by_ifindex: dict[int, set[str]] = {}

    # --- writers (event threads) ------------------------------------------------------

    def put(self, owner: str, claim: Claim) -> None:
        """Add or replace ``owner``'s claim; no-op (and no change signal) if unchanged."""
        with self._lock:
            if self._claims.get(owner) == claim:
                return
            self._drop(owner)
            self._add(owner, claim)
        self._changed()

    def remove(self, owner: str) -> None:
        with self._lock:
            if owner not in self._claims:
                return
            self._drop(owner)
        self._changed()

    def replace_all(self, claims: Mapping[str, Claim]) -> None:
        """Make the index exactly ``claims`` (after a relist), keeping unchanged owners'
        precedence so a resync does not reshuffle who answers for a shared address."""
        with self._lock:
            if claims == self._claims:
                return
            for owner in [o for o in self._claims if o not in claims]:
                self._drop(owner)
            for owner, claim in claims.items():
                if self._claims.get(owner) != claim:
                    self._drop(owner)
                    self._add(owner, claim)
        self._changed()

    def clear(self) -> None:
        self.replace_all({})

    # --- readers (scrape path) --------------------------------------------------------

    def by_ip(self, ip: IPAddress) -> Endpoint | None:
        ip = normalize_ip(ip)
        with self._lock:
            return self._newest(self._by_ip.get(ip))

    def by_ifindex(self, ifindex: int) -> Endpoint | None:
        with self._lock:
            return self._newest(self._by_ifindex.get(ifindex))

    def get(self, owner: str) -> Claim | None:
        with self._lock:
            return self._claims.get(owner)

    def owners(self) -> dict[str, Claim]:
        with self._lock:
            return dict(self._claims)

    def __len__(self) -> int:
        with self._lock:
            return len(self._claims)

    # --- internals (lock held) --------------------------------------------------------

    def _newest(self, owners: set[str] | None) -> Endpoint | None:
        if not owners:
            return None
        best = max(owners, key=self._seq.__getitem__)
        return self._claims[best].endpoint

    def _add(self, owner: str, claim: Claim) -> None:
        self._claims[owner] = claim
        self._seq[owner] = self._next
        self._next += 1
        for ip in claim.ips:
            self._by_ip.setdefault(ip, set()).add(owner)
        for idx in claim.ifindexes:
            self._by_ifindex.setdefault(idx, set()).add(owner)

    def _drop(self, owner: str) -> None:
        claim = self._claims.pop(owner, None)
        self._seq.pop(owner, None)
        if claim is None:
            return
        for ip in claim.ips:
            _discard(self._by_ip, ip, owner)
        for idx in claim.ifindexes:
            _discard(self._by_ifindex, idx, owner)

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change()


def _discard(table: dict[K, set[str]], key: K, owner: str) -> None:
    owners = table.get(key)
    if owners is not None:
        owners.discard(owner)
        if not owners:
            del table[key]
