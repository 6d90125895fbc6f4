"""The containerd resolver when its source hangs instead of failing (issue 10): the real
containerd of tests/containerd_engine.py behind a loopback fault proxy
(fault_proxy.py) that stalls (accepts, never answers; the open HTTP/2 connection goes
silent without a FIN) or cuts mid-stream, and a change no event reports (an address added
inside a task's namespace) that only the periodic resync can find.

``ctr`` drives containerd on its own socket; only the resolver goes through the proxy.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from retinad.config.schema import ContainerdResolverSettings, ResolverSettings, Settings
from retinad.model import Endpoint
from retinad.resolvers.base import ResolverContext
from retinad.resolvers.containerd import ContainerdResolver, create
from retinad.resolvers.index import Claim
from tests.containerd_engine import ContainerdEngine
from tests.daemon_proc import wait_for
from tests.resolvers.fault_checks import down_within, exported_up, wait_warning, warnings
from tests.resolvers.fault_proxy import StreamFaultProxy
from tests.resolvers.test_containerd import NAMESPACES, Net, cid, containers, engine, nets, owner

__all__ = ["containers", "engine", "nets"]  # the fixtures, shared with test_containerd.py

READ_TIMEOUT = 2
"""``read_timeout_seconds`` here: a hung containerd must be down within 2x this."""
LOGGER = "test.containerd.faults"


def make_resolver(address: Path, resync: int = 0) -> ContainerdResolver:
    cfg = ContainerdResolverSettings(
        address=str(address),
        namespaces=list(NAMESPACES),
        read_timeout_seconds=READ_TIMEOUT,
        resync_interval_seconds=resync,
    )
    settings = Settings(resolvers=ResolverSettings(containerd=cfg))
    return create(ResolverContext(settings, logging.getLogger(LOGGER), lambda: None))


@pytest.fixture
def proxy(engine: ContainerdEngine, tmp_path: Path) -> Iterator[StreamFaultProxy]:
    with StreamFaultProxy(tmp_path / "containerd.sock", str(engine.sock)) as p:
        yield p


@pytest.fixture
def started() -> Iterator[list[ContainerdResolver]]:
    made: list[ContainerdResolver] = []
    yield made
    for r in made:
        r.stop()


def start(made: list[ContainerdResolver], address: Path, resync: int = 0) -> ContainerdResolver:
    r = make_resolver(address, resync)
    made.append(r)
    r.start()
    return r


def run(engine: ContainerdEngine, containers: list[tuple[str, str]], net: Net) -> Endpoint:
    c = cid("f")
    containers.append(("default", c))
    engine.run("default", c, netns=net.name)
    return Endpoint("default", c, "container", c)


def test_stall_goes_down_within_the_bound_then_heals_with_the_outages_changes(
    engine: ContainerdEngine,
    nets: Callable[[], Net],
    containers: list[tuple[str, str]],
    proxy: StreamFaultProxy,
    started: list[ContainerdResolver],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    r = start(started, proxy.path)
    assert r.follower.wait_up(10)
    gone_net, new_net = nets(), nets()
    gone = run(engine, containers, gone_net)
    wait_for(lambda: r.by_ip(gone_net.v4) == gone, timeout=5, what="the first container")

    assert exported_up(r) == 1
    proxy.stall()
    down_within(r, 2 * READ_TIMEOUT)
    assert exported_up(r) == 0
    lost = (
        f"containerd: source lost (no answer from containerd at {proxy.path} "
        f"within {READ_TIMEOUT}s (checking a silent event stream))"
    )
    assert any(m.startswith(lost) for m in warnings(caplog, LOGGER)), warnings(caplog, LOGGER)
    assert r.by_ip(gone_net.v4) == gone  # still what it knew

    # the outage: the first task dies and goes, a new one starts; reconnects time out
    engine.remove("default", gone.name)
    new = run(engine, containers, new_net)
    retry = (
        f"containerd: not connected (no answer from containerd at {proxy.path} "
        f"within {READ_TIMEOUT}s"
    )
    # the first reconnect (after a backoff of at most 0.5 s) meets a source that accepts
    # and never answers: bounded too
    wait_warning(caplog, LOGGER, retry, within=READ_TIMEOUT + 1.0)
    assert not r.up and r.by_ip(new_net.v4) is None

    proxy.heal()
    wait_for(lambda: r.up, timeout=40, what="up again after the proxy heals")
    assert exported_up(r) == 1
    assert r.index.owners() == {owner(new_net): new_net.claim(new)}  # exact at once


def test_cut_mid_stream_goes_down_and_reconnects_with_events_flowing(
    engine: ContainerdEngine,
    nets: Callable[[], Net],
    containers: list[tuple[str, str]],
    proxy: StreamFaultProxy,
    started: list[ContainerdResolver],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    r = start(started, proxy.path)
    assert r.follower.wait_up(10) and r.follower.sessions == 1
    proxy.cut()
    wait_for(lambda: r.follower.sessions == 2, timeout=10, what="a second session")
    msgs = warnings(caplog, LOGGER)
    assert len(msgs) == 1 and msgs[0].startswith("containerd: source lost ("), msgs
    wait_for(lambda: r.up, timeout=10, what="up again")
    net = nets()
    ep = run(engine, containers, net)
    wait_for(
        lambda: r.index.owners() == {owner(net): net.claim(ep)},
        timeout=5,
        what="a container started after the cut to be named",
    )


def test_a_containerd_that_accepts_and_never_answers_is_down_until_it_answers(
    proxy: StreamFaultProxy,
    started: list[ContainerdResolver],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    proxy.stall()
    r = start(started, proxy.path)
    want = (
        f"containerd: not connected (no answer from containerd at {proxy.path} "
        f"within {READ_TIMEOUT}s (listing tasks and containers))"
    )
    wait_warning(caplog, LOGGER, want, within=READ_TIMEOUT)
    assert not r.up
    proxy.heal()
    wait_for(lambda: r.up, timeout=40, what="up once containerd answers")


def test_a_change_no_event_reports_is_found_by_the_periodic_resync(
    engine: ContainerdEngine,
    nets: Callable[[], Net],
    containers: list[tuple[str, str]],
    started: list[ContainerdResolver],
) -> None:
    """An address added inside a running task's namespace (as a CNI plugin or the
    workload may do) raises no containerd event: only a relist reads it."""
    resync = 2
    r = start(started, engine.sock, resync=resync)
    assert r.follower.wait_up(10)
    net = nets()
    ep = run(engine, containers, net)
    wait_for(lambda: r.index.owners() == {owner(net): net.claim(ep)}, timeout=5, what="named")

    extra = ipaddress.IPv4Address(str(net.v4 + 100))
    net.netns.run("ip", "addr", "add", f"{extra}/32", "dev", "eth0")
    before = r.resync.count
    want = Claim.of(ep, [net.v4, net.v6, extra], [net.host_ifindex()])
    wait_for(
        lambda: r.index.owners() == {owner(net): want},
        timeout=resync + READ_TIMEOUT + 5,
        what="the resync to read the added address",
    )
    assert r.resync.count > before and r.by_ip(extra) == ep

    net.netns.run("ip", "addr", "del", f"{extra}/32", "dev", "eth0")
    before = r.resync.count
    wait_for(
        lambda: r.by_ip(extra) is None,
        timeout=resync + READ_TIMEOUT + 5,
        what="the resync to forget the removed address",
    )
    assert r.resync.count > before
    assert r.index.owners() == {owner(net): net.claim(ep)}
    assert r.follower.sessions == 1 and r.up


def test_kill_behind_a_stalled_line_is_forgotten_after_healing(
    engine: ContainerdEngine,
    nets: Callable[[], Net],
    containers: list[tuple[str, str]],
    proxy: StreamFaultProxy,
    started: list[ContainerdResolver],
) -> None:
    """The task dies while the resolver cannot hear: the relist after healing drops it."""
    r = start(started, proxy.path)
    assert r.follower.wait_up(10)
    net = nets()
    c = cid("k")
    containers.append(("default", c))
    pid = engine.run("default", c, netns=net.name)
    ep = Endpoint("default", c, "container", c)
    wait_for(lambda: r.by_ip(net.v4) == ep, timeout=5, what="named")
    proxy.stall()
    down_within(r, 2 * READ_TIMEOUT)
    os.kill(pid, signal.SIGKILL)
    proxy.heal()
    wait_for(lambda: r.up, timeout=40, what="up again")
    # its exit event went into the dead connection: only the relist can drop it
    wait_for(lambda: r.index.owners() == {}, timeout=2, what="the dead task dropped")
    assert r.by_ip(net.v4) is None
