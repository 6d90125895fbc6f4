"""The docker resolver when its source hangs instead of failing (issue 10), against the real
dockerd behind a loopback fault proxy (fault_proxy.py): a proxy that stalls (accepts,
never answers; open connections go silent without a FIN), one that cuts mid-stream, and one
that hides every event while the stream itself stays healthy.

Each must be detected within the configured bound (``read_timeout_seconds``: twice it at
most), reported (``up`` False, one warning naming the source and what was waited for),
healed by reconnecting with backoff, and leave the index exact afterwards: a container made
during the outage is named, one removed during it is forgotten.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from retinad.config.schema import DockerResolverSettings, ResolverSettings, Settings
from retinad.resolvers.base import ResolverContext
from retinad.resolvers.docker import DockerResolver, create
from retinad.resolvers.index import Claim
from tests.daemon_proc import wait_for
from tests.docker_engine import Container, DockerEngine, Things, unique
from tests.resolvers.fault_checks import down_within, exported_up, wait_warning, warnings
from tests.resolvers.fault_proxy import StreamFaultProxy
from tests.resolvers.test_docker import docker_engine, endpoint, host_side, things

__all__ = ["docker_engine", "things"]  # the fixtures, shared with test_docker.py

READ_TIMEOUT = 2
"""``read_timeout_seconds`` for these tests: a hung source must be down within 2x this."""
LOGGER = "test.docker.faults"


def make_resolver(path: Path, resync: int = 0) -> DockerResolver:
    """Built the way the daemon builds it, from a whole Settings, pointed at the proxy."""
    cfg = DockerResolverSettings(
        host=f"unix://{path}",
        read_timeout_seconds=READ_TIMEOUT,
        resync_interval_seconds=resync,
    )
    settings = Settings(resolvers=ResolverSettings(docker=cfg))
    return create(ResolverContext(settings, logging.getLogger(LOGGER), lambda: None))


@pytest.fixture
def proxy(docker_engine: DockerEngine, tmp_path: Path) -> Iterator[StreamFaultProxy]:
    with StreamFaultProxy(tmp_path / "docker.sock", docker_engine.host[len("unix://") :]) as p:
        yield p


@pytest.fixture
def started() -> Iterator[list[DockerResolver]]:
    made: list[DockerResolver] = []
    yield made
    for r in made:
        r.stop()


def start(made: list[DockerResolver], proxy: StreamFaultProxy, resync: int = 0) -> DockerResolver:
    r = make_resolver(proxy.path, resync)
    made.append(r)
    r.start()
    return r


def claims(r: DockerResolver, *cs: Container) -> dict[str, Claim | None]:
    return {c.id: r.index.get(c.id) for c in cs}


def test_stall_goes_down_within_the_bound_then_heals_with_the_outages_changes(
    proxy: StreamFaultProxy,
    things: Things,
    started: list[DockerResolver],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    r = start(started, proxy)
    assert r.follower.wait_up(10)
    gone = things.run(unique("rt-gone"))
    gone_ep = endpoint(gone)
    wait_for(lambda: r.by_ip(gone.ip()) == gone_ep, timeout=5, what="the first container")

    assert exported_up(r) == 1
    proxy.stall()
    down_within(r, 2 * READ_TIMEOUT)
    assert exported_up(r) == 0
    lost = f"docker: source lost (no answer from unix://{proxy.path} within {READ_TIMEOUT}s"
    assert any(m.startswith(lost) for m in warnings(caplog, LOGGER)), warnings(caplog, LOGGER)
    # still answering with what it last knew
    assert r.by_ip(gone.ip()) == gone_ep

    # the outage: one container goes, one comes
    things.remove(gone)
    new = things.run(unique("rt-new"))
    new_ep = endpoint(new)
    retry = f"docker: not connected (no answer from unix://{proxy.path} within {READ_TIMEOUT}s"
    # the first reconnect (after a backoff of at most 0.5 s) meets a source that accepts
    # and never answers: bounded too
    wait_warning(caplog, LOGGER, retry, within=READ_TIMEOUT + 1.0)
    assert not r.up
    # not known while down (its IP may still name whoever had it before: the engine is
    # shared, and dockerd reuses addresses at once)
    assert r.by_ip(new.ip()) != new_ep and r.index.get(new.id) is None

    proxy.heal()
    wait_for(lambda: r.up, timeout=40, what="up again after the proxy heals")
    assert exported_up(r) == 1
    # the relist ran before up turned True: exact at once
    assert claims(r, gone, new) == {
        gone.id: None,
        new.id: Claim.of(new_ep, [new.ip()], host_side(things, new)),
    }
    assert r.by_ip(new.ip()) == new_ep
    assert r.by_ip(gone.ip()) != gone_ep


def test_cut_mid_stream_goes_down_and_reconnects_with_the_index_exact(
    proxy: StreamFaultProxy,
    things: Things,
    started: list[DockerResolver],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    r = start(started, proxy)
    assert r.follower.wait_up(10)
    assert r.follower.sessions == 1
    proxy.cut()
    wait_for(lambda: r.follower.sessions == 2, timeout=10, what="a second session")
    msgs = warnings(caplog, LOGGER)
    assert len(msgs) == 1 and msgs[0].startswith("docker: source lost ("), msgs
    wait_for(lambda: r.up, timeout=10, what="up again")
    c = things.run(unique("rt-after-cut"))
    want = Claim.of(endpoint(c), [c.ip()], host_side(things, c))
    wait_for(lambda: claims(r, c) == {c.id: want}, timeout=5, what="a new container named")


def test_a_source_that_accepts_and_never_answers_is_down_until_it_answers(
    proxy: StreamFaultProxy,
    started: list[DockerResolver],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    proxy.stall()
    r = start(started, proxy)
    want = f"docker: not connected (no answer from unix://{proxy.path} within {READ_TIMEOUT}s"
    wait_warning(caplog, LOGGER, want, within=READ_TIMEOUT)
    assert not r.up
    proxy.heal()
    wait_for(lambda: r.up, timeout=40, what="up once the source answers")


def test_missed_events_are_repaired_by_the_periodic_resync(
    proxy: StreamFaultProxy,
    things: Things,
    started: list[DockerResolver],
) -> None:
    resync = 3
    proxy.blind_docker_events(True)  # the stream stays healthy; no container event arrives
    r = start(started, proxy, resync=resync)
    assert r.follower.wait_up(10)

    c = things.run(unique("rt-unseen"))
    before = r.resync.count
    want = Claim.of(endpoint(c), [c.ip()], host_side(things, c))
    wait_for(
        lambda: claims(r, c) == {c.id: want},
        timeout=resync + READ_TIMEOUT + 5,
        what="the next resync to name a container whose start event was missed",
    )
    assert r.resync.count > before  # no event named it: the resync did

    things.remove(c)
    before = r.resync.count
    wait_for(
        lambda: claims(r, c) == {c.id: None},
        timeout=resync + READ_TIMEOUT + 5,
        what="the next resync to forget a container whose destroy event was missed",
    )
    assert r.resync.count > before
    assert r.follower.sessions == 1 and r.up  # never down: the connection was fine
