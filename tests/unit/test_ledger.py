"""SeriesLedger: owner changes, grace expiry, idle eviction of unknown keys, the cap."""

from __future__ import annotations

from retinad.exporter.ledger import UNCOUNTED, Labels, Record, SeriesLedger, Values

A = ("ingress", "shop", "web-1")
B = ("ingress", "shop", "web-2")
UNKNOWN = ("ingress", "", "unknown")
OVERFLOW = ("ingress", "", "overflow")


class FakeMap:
    """Stands in for the kernel map's lookup-and-delete: what the ledger took, and when."""

    def __init__(self) -> None:
        self.values: dict[bytes, Values] = {}
        self.taken: list[bytes] = []

    def take(self, key: bytes) -> Values | None:
        self.taken.append(key)
        return self.values.pop(key, None)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(cap: int = 100, grace: float = 300.0) -> tuple[SeriesLedger, FakeMap, Clock]:
    fm, clock = FakeMap(), Clock()
    ledger = SeriesLedger(
        width=2,
        grace=grace,
        cap=cap,
        overflow=lambda ls: (ls[0], "", "overflow"),
        take=fm.take,
        coarse=lambda ls: ls[:1],
        clock=clock,
    )
    return ledger, fm, clock


def rec(key: bytes, labels: Labels, values: Values, live: bool = True) -> Record:
    return Record(key, labels, values, live)


def test_owner_change_keeps_old_counts_and_frees_the_key() -> None:
    ledger, fm, clock = make()
    assert ledger.update([rec(b"k", A, (5, 500))]) == {A: (5, 500)}
    # The IP now belongs to B; the kernel counted 2 more packets before the sweep.
    fm.values[b"k"] = (7, 700)
    totals = ledger.update([rec(b"k", B, (7, 700))])
    assert fm.taken == [b"k"]
    assert totals == {A: (7, 700)}  # the final value taken atomically stays with A
    assert ledger.evicted == 1
    # The next packet recreates the key, which binds to B from zero.
    assert ledger.update([rec(b"k", B, (1, 100))]) == {A: (7, 700), B: (1, 100)}
    # A is gone: its series stays for the grace period, then disappears.
    clock.now += 299
    assert A in ledger.update([rec(b"k", B, (1, 100))])
    clock.now += 2
    assert ledger.update([rec(b"k", B, (1, 100))]) == {B: (1, 100)}
    assert ledger.coarse_totals() == {("ingress",): (8, 800)}


def test_live_idle_endpoint_keeps_its_series() -> None:
    ledger, fm, clock = make(grace=10)
    ledger.update([rec(b"k", A, (1, 10))])
    clock.now += 3600
    assert ledger.update([rec(b"k", A, (1, 10))]) == {A: (1, 10)}
    assert fm.taken == []


def test_unknown_idle_key_is_freed_after_grace_and_its_series_dropped() -> None:
    ledger, fm, clock = make(grace=10)
    ledger.update([rec(b"u", UNKNOWN, (3, 30), live=False)])
    clock.now += 5
    assert ledger.update([rec(b"u", UNKNOWN, (3, 30), live=False)]) == {UNKNOWN: (3, 30)}
    clock.now += 5
    assert ledger.update([rec(b"u", UNKNOWN, (3, 30), live=False)]) == {}
    assert fm.taken == [b"u"]
    assert ledger.bound_keys() == 0
    assert ledger.coarse_totals() == {("ingress",): (3, 30)}


def test_unknown_key_that_keeps_counting_is_kept() -> None:
    ledger, fm, clock = make(grace=10)
    for n in range(1, 5):
        clock.now += 8
        assert ledger.update([rec(b"u", UNKNOWN, (n, n), live=False)]) == {UNKNOWN: (n, n)}
    assert fm.taken == []


def test_cap_sends_new_label_sets_to_overflow_and_counts_refusals() -> None:
    ledger, _, _ = make(cap=2)
    c = ("ingress", "shop", "web-3")
    totals = ledger.update([rec(b"1", A, (1, 1)), rec(b"2", B, (2, 2)), rec(b"3", c, (4, 4))])
    assert totals == {A: (1, 1), B: (2, 2), OVERFLOW: (4, 4)}
    assert ledger.dropped == 1
    # An existing label set is not refused again, nor is a refused key re-counted.
    ledger.update([rec(b"1", A, (1, 1)), rec(b"2", B, (2, 2)), rec(b"3", c, (5, 5))])
    assert ledger.dropped == 1


def test_key_vanishing_from_the_map_keeps_its_counts() -> None:
    ledger, fm, _ = make()
    ledger.update([rec(b"k", A, (4, 40))])
    assert ledger.update([]) == {A: (4, 40)}
    assert fm.taken == []


def test_churn_is_bounded() -> None:
    """5,000 short-lived endpoints: series and bound keys never exceed what is live."""
    ledger, fm, clock = make(cap=10_000, grace=5)
    live: dict[bytes, Labels] = {}
    peak_series = 0
    for i in range(5000):
        key = i.to_bytes(4, "big")
        live[key] = ("ingress", "ns", f"pod-{i}")
        records = [rec(k, ls, (1, 1)) for k, ls in live.items()]
        if len(live) > 50:  # the oldest endpoint dies: its key now reads as unknown
            old = next(iter(live))
            del live[old]
            fm.values[old] = (1, 1)
            records[0] = rec(old, ("ingress", "", "unknown"), (1, 1), live=False)
        clock.now += 0.1
        ledger.update(records)
        peak_series = max(peak_series, ledger.series_count())
    assert ledger.bound_keys() == 50
    # live endpoints + those dead within the grace period (5 s / 0.1 s per step)
    assert peak_series <= 50 + 51
    assert ledger.coarse_totals() == {("ingress",): (5000, 5000)}


def test_cap_counts_series_at_their_worst_case() -> None:
    """cap=25 series, 10 per label set (packets, bytes, 8 flags): 2 label sets fit."""
    fm = FakeMap()
    ledger = SeriesLedger(width=2, grace=300, cap=25, overflow=lambda ls: (ls[0], "", "overflow"),
                          take=fm.take, series_per_labels=10)  # fmt: skip
    c = ("ingress", "shop", "web-3")
    totals = ledger.update([rec(b"1", A, (1, 1)), rec(b"2", B, (2, 2)), rec(b"3", c, (4, 4))])
    assert totals == {A: (1, 1), B: (2, 2), OVERFLOW: (4, 4)}
    assert ledger.dropped == 1


def test_uncounted_keys_are_never_exported_and_leave_the_map_when_named() -> None:
    ledger, fm, _ = make()
    fm.values[b"h"] = (9, 9)
    assert ledger.update([rec(b"h", UNCOUNTED, (9, 9))]) == {}
    assert ledger.series_count() == 0 and ledger.coarse_totals() == {}
    # The other key is gone: the key is named now, so it is taken (its history discarded).
    assert ledger.update([rec(b"h", A, (9, 9))]) == {}
    assert fm.taken == [b"h"]
    assert ledger.update([rec(b"h", A, (1, 1))]) == {A: (1, 1)}
