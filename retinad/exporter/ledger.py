"""Series hygiene: which label set each kernel map key's counts belong to, over time.

Kernel maps count per address (and interface); the endpoint that owns an address changes
(a container dies, Kubernetes hands its IP to a new pod). Naming each key afresh at every
scrape, as Retina does, moves a dead pod's whole count onto whoever holds the IP next and
keeps dead endpoints' series forever. The ledger instead:

* binds each key to the label set it was first attributed to;
* when the key's owner changes, takes the key out of the kernel map atomically (lookup and
  delete) and keeps its final counts with the old label set, so the old series stays
  monotonic and the new owner starts from zero with a fresh key;
* keeps a label set that has no key left for ``grace`` seconds after it was last active,
  then drops it: the series disappears instead of going stale;
* frees kernel keys of addresses no resolver knows once they have been idle for
  ``grace`` seconds, so churn of unknown peers cannot fill the map;
* caps the number of series: ``cap`` counts exported series, each label set standing for
  ``series_per_labels`` of them (its worst case: packets, bytes and every TCP flag); a new
  label set that would pass the cap is counted under its overflow label set (whose series
  come on top, one label set per direction) and ``dropped`` counts the refusals;
* binds a key the caller names ``UNCOUNTED`` (its packets are already counted under
  another key, e.g. a container's routed traffic seen again on a host interface) to no
  series: it stays bound, so the kernel's count in it is never exported, and when its name
  later changes (the other key is gone) it is taken out of the map like any owner change,
  so its history cannot come back under a name;
* optionally keeps coarse totals (``coarse`` projects a label set onto fewer labels, e.g.
  drop reason and direction) that never lose a retired key's counts, for node-level
  series computed from the same map.

It is pure bookkeeping driven by ``update``; the caller reads the map, names each key
and supplies ``take`` (atomic lookup-and-delete), so it is tested without a kernel.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

Labels = tuple[str, ...]
Values = tuple[int, ...]
UNCOUNTED: Labels = ()
"""The label set of keys whose counts are exported through other keys (see above)."""


@dataclass(frozen=True)
class Record:
    """One map entry as the caller read and named it."""

    key: bytes
    labels: Labels
    values: Values
    live: bool
    """A resolver knows the endpoint now (or the key is the map's overflow key): the key
    is kept while idle. False for unknown addresses, which are freed after ``grace``."""


@dataclass
class _Binding:
    intended: Labels
    """What the key was named when first seen; a different name later means a new owner."""
    effective: Labels
    """Where its counts go: ``intended``, or the overflow label set when over the cap."""
    values: Values
    changed_at: float


@dataclass
class _Series:
    keys: int
    """Kernel keys currently bound to this label set."""
    retired: list[int]
    """Final counts of keys that were taken out of the map."""
    active_at: float
    """Last time a key of it counted a packet or its endpoint was known to be live."""


class SeriesLedger:
    """Binds keys to label sets; see the module docstring. Thread-safe."""

    def __init__(
        self,
        *,
        width: int,
        grace: float,
        cap: int,
        overflow: Callable[[Labels], Labels],
        take: Callable[[bytes], Values | None],
        coarse: Callable[[Labels], Labels] | None = None,
        clock: Callable[[], float] = time.monotonic,
        series_per_labels: int = 1,
    ) -> None:
        self.width = width
        self.grace = grace
        self.cap = cap
        self.series_per_labels = series_per_labels
        self._overflow = overflow
        self._take = take
        self._clock = clock
        self._lock = threading.Lock()
        self._bound: dict[bytes, _Binding] = {}
        self._series: dict[Labels, _Series] = {}
        self._coarse = coarse
        self._coarse_retired: dict[Labels, list[int]] = {}
        self._capped = 0
        """Label sets that count towards the cap."""
        self.dropped = 0
        """Label sets refused because of the cap (retinad_series_dropped_total)."""
        self.evicted = 0
        """Kernel keys this ledger deleted (owner changed, or unknown and idle)."""

    def update(self, records: Iterable[Record]) -> dict[Labels, Values]:
        """Apply one read of the map; return the counter values of every label set."""
        with self._lock:
            now = self._clock()
            seen: set[bytes] = set()
            for rec in records:
                seen.add(rec.key)
                self._apply(rec, now)
            for key in [k for k in self._bound if k not in seen]:
                # Gone from the map without us (maps recreated): keep what it had counted.
                self._retire(key, None)
            self._expire(now)
            return self._totals()

    def coarse_totals(self) -> dict[Labels, Values]:
        """Totals by ``coarse(labels)`` as of the last update, retired keys included
        forever (the coarse label sets are few and bounded)."""
        assert self._coarse is not None, "no coarse projection configured"
        with self._lock:
            acc = {ls: list(v) for ls, v in self._coarse_retired.items()}
            for b in self._bound.values():
                if b.intended == UNCOUNTED:
                    continue
                slot = acc.setdefault(self._coarse(b.intended), [0] * self.width)
                for i, v in enumerate(b.values):
                    slot[i] += v
            return {ls: tuple(v) for ls, v in acc.items()}

    def series_count(self) -> int:
        """Label sets exported now (each makes up to ``series_per_labels`` series)."""
        with self._lock:
            return self._exported()

    def bound_keys(self) -> int:
        with self._lock:
            return len(self._bound)

    # --- internals (lock held) --------------------------------------------------------

    def _apply(self, rec: Record, now: float) -> None:
        b = self._bound.get(rec.key)
        if b is not None and b.intended != rec.labels:
            self._retire(rec.key, self._take(rec.key) or rec.values)
            self.evicted += 1
            return  # the next packet recreates the key, which then binds to the new owner
        if b is None:
            b = self._bind(rec, now)
        series = self._series[b.effective]
        if rec.values != b.values:
            b.values = rec.values
            b.changed_at = now
            series.active_at = now
        elif rec.live:
            series.active_at = now
        elif now - b.changed_at >= self.grace:
            self._retire(rec.key, self._take(rec.key) or rec.values)
            self.evicted += 1

    def _bind(self, rec: Record, now: float) -> _Binding:
        effective = rec.labels
        full = (self._capped + 1) * self.series_per_labels > self.cap
        if effective != UNCOUNTED and effective not in self._series and full:
            effective = self._overflow(rec.labels)
            self.dropped += 1
        series = self._series.get(effective)
        if series is None:
            series = self._series[effective] = _Series(0, [0] * self.width, now)
            self._capped += self._counts_to_cap(effective)
        series.keys += 1
        b = _Binding(rec.labels, effective, (0,) * self.width, now)
        self._bound[rec.key] = b
        return b

    def _retire(self, key: bytes, final: Values | None) -> None:
        b = self._bound.pop(key)
        series = self._series[b.effective]
        values = final if final is not None else b.values
        for i, v in enumerate(values):
            series.retired[i] += v
        series.keys -= 1
        if self._coarse is not None and b.intended != UNCOUNTED:
            slot = self._coarse_retired.setdefault(self._coarse(b.intended), [0] * self.width)
            for i, v in enumerate(values):
                slot[i] += v

    def _counts_to_cap(self, labels: Labels) -> bool:
        """Overflow label sets (the cap's own destination) and UNCOUNTED do not."""
        return labels != UNCOUNTED and self._overflow(labels) != labels

    def _exported(self) -> int:
        return len(self._series) - (UNCOUNTED in self._series)

    def _expire(self, now: float) -> None:
        for labels in [ls for ls, s in self._series.items() if not s.keys]:
            if now - self._series[labels].active_at >= self.grace:
                del self._series[labels]
                self._capped -= self._counts_to_cap(labels)

    def _totals(self) -> dict[Labels, Values]:
        acc = {ls: list(s.retired) for ls, s in self._series.items()}
        for b in self._bound.values():
            slot = acc[b.effective]
            for i, v in enumerate(b.values):
                slot[i] += v
        acc.pop(UNCOUNTED, None)
        return {ls: tuple(v) for ls, v in acc.items()}
