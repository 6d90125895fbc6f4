"""What the docker and containerd fault tests check alike: how fast a resolver notices,
and what it logs when it does."""

from __future__ import annotations

import logging
import time
from typing import Protocol

import pytest

from retinad import metric_names as naming
from retinad.resolvers.base import Resolver, ResolverChain
from retinad.resolvers.metrics import ResolverMetrics
from tests.daemon_proc import wait_for

DETECT_SLACK = 1.5
"""Seconds allowed on top of a bound for a loaded 2-core machine to run the threads."""


class HasUp(Protocol):
    @property
    def up(self) -> bool: ...


def exported_up(resolver: Resolver) -> float:
    """``retinad_resolver_up{resolver=<name>}`` as the daemon's scrape collector gives it."""
    for family in ResolverMetrics(ResolverChain([resolver])).collect():
        if family.name == naming.RESOLVER_UP:
            (sample,) = family.samples
            assert sample.labels == {"resolver": resolver.name}
            return sample.value
    raise AssertionError(f"no {naming.RESOLVER_UP} family")


def warnings(caplog: pytest.LogCaptureFixture, logger: str) -> list[str]:
    return [
        rec.getMessage()
        for rec in caplog.records
        if rec.name == logger and rec.levelno == logging.WARNING
    ]


def wait_warning(
    caplog: pytest.LogCaptureFixture, logger: str, prefix: str, *, within: float
) -> float:
    """Seconds until a warning starting with ``prefix`` is logged; fails after ``within``
    plus the slack."""
    t0 = time.monotonic()
    wait_for(
        lambda: any(m.startswith(prefix) for m in warnings(caplog, logger)),
        timeout=within + 10,
        what=f"a warning {prefix!r}",
    )
    took = time.monotonic() - t0
    assert took <= within + DETECT_SLACK, f"{prefix!r} took {took:.2f}s, bound {within}s"
    return took


def down_within(resolver: HasUp, bound: float) -> float:
    """Seconds until ``up`` turns False; fails if past ``bound`` plus the slack."""
    t0 = time.monotonic()
    wait_for(lambda: not resolver.up, timeout=bound + 10, what="up to turn False")
    took = time.monotonic() - t0
    assert took <= bound + DETECT_SLACK, f"down after {took:.2f}s, bound {bound}s"
    return took
