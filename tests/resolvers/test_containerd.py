"""The containerd resolver against a real containerd (tests/containerd_engine.py): no mocks.

Containers run with ``ctr`` in network namespaces the tests made (veth to the root
namespace, IPv4 and IPv6 inside), so every expectation is exact: the Endpoint, the
addresses (no loopback, no fe80::) and the host-side veth ifindex read from sysfs. Waiting
is always a poll with a deadline; containerd's events are what make the index change.
"""

from __future__ import annotations

import ipaddress
import itertools
import logging
import os
import secrets
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from retinad.config.schema import ContainerdResolverSettings, ResolverSettings, Settings
from retinad.model import Endpoint
from retinad.resolvers.base import ResolverContext
from retinad.resolvers.containerd import ContainerdResolver, create
from retinad.resolvers.index import Claim
from tests.containerd_engine import ContainerdEngine, containerd_engine, pid_netns_inode
from tests.daemon_proc import wait_for
from tests.netns import Netns, VethLink, veth_to

NAMESPACES = ["k8s.io", "default"]
EVENT_DEADLINE = 2.0
"""Seconds within which an event must show in the index (the issue's promise)."""

_subnets = itertools.count(secrets.randbelow(200))


def make_resolver(engine: ContainerdEngine) -> ContainerdResolver:
    """Built the way the daemon builds it: create(ctx) from a whole Settings."""
    cfg = ContainerdResolverSettings(address=str(engine.sock), namespaces=list(NAMESPACES))
    settings = Settings(resolvers=ResolverSettings(containerd=cfg))
    return create(ResolverContext(settings, logging.getLogger("test.containerd"), lambda: None))


def cid(prefix: str = "c") -> str:
    return f"rt-{prefix}-{secrets.token_hex(4)}"


@dataclass
class Net:
    """A network namespace with a veth to the root namespace, as CNI would leave it."""

    netns: Netns
    link: VethLink
    v4: ipaddress.IPv4Address
    v6: ipaddress.IPv6Address

    @property
    def name(self) -> str:
        return self.netns.name

    def host_ifindex(self) -> int:
        return self.link.ifindex()

    def claim(self, endpoint: Endpoint) -> Claim:
        return Claim.of(endpoint, [self.v4, self.v6], [self.host_ifindex()])


@pytest.fixture(scope="module")
def engine() -> Iterator[ContainerdEngine]:
    with containerd_engine() as e:
        e.import_image("default")
        yield e


@pytest.fixture
def nets() -> Iterator[Callable[[], Net]]:
    made: list[Net] = []

    def make() -> Net:
        k = next(_subnets) % 250
        ns = Netns()
        try:
            link = veth_to(
                ns,
                host_ip=f"10.78.{k}.1",
                peer_ip=f"10.78.{k}.2",
                host_ip6=f"fd78:{k:x}::1",
                peer_ip6=f"fd78:{k:x}::2",
            )
        except Exception:
            ns.close()
            raise
        net = Net(
            ns, link, ipaddress.IPv4Address(f"10.78.{k}.2"), ipaddress.IPv6Address(f"fd78:{k:x}::2")
        )
        made.append(net)
        return net

    yield make
    for net in made:
        net.netns.close()  # deletes the veth pair with it


@pytest.fixture
def containers(engine: ContainerdEngine) -> Iterator[list[tuple[str, str]]]:
    """(namespace, id) of what a test ran; removed afterwards, even on failure."""
    made: list[tuple[str, str]] = []
    yield made
    for ns, c in made:
        engine.remove(ns, c)


@pytest.fixture
def resolver(engine: ContainerdEngine) -> Iterator[ContainerdResolver]:
    r = make_resolver(engine)
    r.start()
    try:
        assert r.follower.wait_up(10), "resolver never in sync with a running containerd"
        yield r
    finally:
        r.stop()


def owner(net: Net) -> str:
    """The owner key of the claim for ``net``: its namespace's inode."""
    return f"net:[{os.stat(f'/run/netns/{net.name}').st_ino}]"


def polled(fn: Callable[[], bool], what: str, timeout: float = EVENT_DEADLINE) -> float:
    """Poll ``fn`` until true; fail after ``timeout``; return how long it took."""
    t0 = time.monotonic()
    wait_for(fn, timeout=timeout, what=what)
    return time.monotonic() - t0


def settle(
    engine: ContainerdEngine,
    resolver: ContainerdResolver,
    nets: Callable[[], Net],
    containers: list[tuple[str, str]],
) -> dict[str, Claim]:
    """Run a marker container in "default" and wait until it is named: containerd sends
    events in order and the resolver applies them in order, so every event before it has
    been applied. Returns the marker's entry of the index."""
    net, marker = nets(), cid("marker")
    containers.append(("default", marker))
    engine.run("default", marker, netns=net.name)
    ep = Endpoint("default", marker, "container", marker)
    polled(lambda: resolver.by_ip(net.v4) == ep, "the marker container to be named")
    return {owner(net): net.claim(ep)}


# --- 1. a plain container: listed at start --------------------------------------------


def test_container_in_default_namespace_is_named_by_id_and_image(
    engine: ContainerdEngine, nets: Callable[[], Net], containers: list[tuple[str, str]]
) -> None:
    net, net2 = nets(), nets()
    from_image, from_rootfs, host_net = cid("img"), cid("rootfs"), cid("hostnet")
    containers += [("default", from_image), ("default", from_rootfs), ("default", host_net)]
    pid = engine.run("default", from_image, netns=net.name, image="retinad.test/busybox:1")
    engine.run("default", from_rootfs, netns=net2.name)
    engine.run("default", host_net, netns=None)  # host network: claims nothing

    r = make_resolver(engine)
    r.start()
    try:
        assert r.follower.wait_up(10)
        ep = Endpoint("default", from_image, "container", "retinad.test/busybox:1")
        ep2 = Endpoint("default", from_rootfs, "container", from_rootfs)  # no image: the id
        assert r.by_ip(net.v4) == ep
        assert r.by_ip(net.v6) == ep
        assert r.by_ip(ipaddress.ip_address(f"::ffff:{net.v4}")) == ep  # v4-mapped
        assert r.by_ifindex(net.host_ifindex()) == ep
        assert r.by_ip(net2.v4) == ep2
        assert r.by_ifindex(net2.host_ifindex()) == ep2
        assert r.index.owners() == {owner(net): net.claim(ep), owner(net2): net2.claim(ep2)}
        assert owner(net) == f"net:[{pid_netns_inode(pid)}]"  # the task's namespace
        assert r.size() == 2
        assert r.up and r.alive
        t0 = time.monotonic()
    finally:
        r.stop()
    assert time.monotonic() - t0 < 5.0, "stop() must unblock the event stream promptly"
    assert not r.alive and not r.up


# --- 2. CRI labels: the pod names the namespace its containers share -------------------


def test_cri_labels_name_the_pod_once_per_network_namespace(
    engine: ContainerdEngine,
    nets: Callable[[], Net],
    containers: list[tuple[str, str]],
    resolver: ContainerdResolver,
) -> None:
    net = nets()
    pod = {"io.kubernetes.pod.name": "web-0", "io.kubernetes.pod.namespace": "shop"}
    sandbox, app = cid("sandbox"), cid("app")
    containers += [("k8s.io", app), ("k8s.io", sandbox)]
    ep = Endpoint("shop", "web-0", "Pod", "web-0")

    engine.run(
        "k8s.io", sandbox, netns=net.name, labels={**pod, "io.cri-containerd.kind": "sandbox"}
    )
    polled(lambda: resolver.by_ip(net.v4) == ep, "the sandbox to be named")
    engine.run(
        "k8s.io",
        app,
        netns=net.name,
        labels={
            **pod,
            "io.cri-containerd.kind": "container",
            "io.kubernetes.container.name": "nginx",
        },
    )
    engine.remove("k8s.io", sandbox)  # the app still runs in the pod's namespace
    marker = settle(engine, resolver, nets, containers)
    # one claim for the shared namespace, exactly the pod, through create and delete events
    assert resolver.index.owners() == {owner(net): net.claim(ep), **marker}
    assert resolver.by_ip(net.v6) == ep
    assert resolver.by_ifindex(net.host_ifindex()) == ep


def test_containers_sharing_a_namespace_make_one_claim_named_by_the_oldest(
    engine: ContainerdEngine,
    nets: Callable[[], Net],
    containers: list[tuple[str, str]],
    resolver: ContainerdResolver,
) -> None:
    net = nets()
    first, second = cid("first"), cid("second")
    containers += [("default", first), ("default", second)]
    ep_first = Endpoint("default", first, "container", first)
    ep_second = Endpoint("default", second, "container", second)
    engine.run("default", first, netns=net.name)
    polled(lambda: resolver.by_ip(net.v4) == ep_first, "the first container")
    engine.run("default", second, netns=net.name)
    engine.remove("default", first)
    polled(
        lambda: resolver.index.owners() == {owner(net): net.claim(ep_second)},
        "the second container to name the namespace alone",
    )
    engine.run("default", first, netns=net.name)  # created again: now the younger one
    marker = settle(engine, resolver, nets, containers)
    assert resolver.index.owners() == {owner(net): net.claim(ep_second), **marker}


# --- 3. events: started after the resolver, then killed and deleted --------------------


def test_started_container_is_named_and_forgotten_within_two_seconds(
    engine: ContainerdEngine,
    nets: Callable[[], Net],
    containers: list[tuple[str, str]],
    resolver: ContainerdResolver,
) -> None:
    net = nets()
    c = cid("late")
    containers.append(("default", c))
    ep = Endpoint("default", c, "container", "retinad.test/busybox:1")
    assert resolver.by_ip(net.v4) is None

    engine.run("default", c, netns=net.name, image="retinad.test/busybox:1")
    took = polled(lambda: resolver.by_ip(net.v4) == ep, "the new container to be named")
    assert resolver.by_ifindex(net.host_ifindex()) == ep
    assert resolver.index.owners() == {owner(net): net.claim(ep)}
    logging.getLogger("test.containerd").info("named after %.3fs", took)

    engine.kill("default", c)
    polled(lambda: resolver.by_ip(net.v4) is None, "the killed task to be forgotten")
    engine.remove("default", c)
    polled(lambda: resolver.size() == 0, "the index to be empty")
    assert resolver.by_ip(net.v6) is None
    assert resolver.by_ifindex(net.host_ifindex()) is None


# --- 4. namespaces not in the config are not followed ---------------------------------


def test_namespace_not_in_config_is_ignored(
    engine: ContainerdEngine,
    nets: Callable[[], Net],
    containers: list[tuple[str, str]],
) -> None:
    other = f"rt-other-{secrets.token_hex(2)}"
    before, after = nets(), nets()
    c1, c2 = cid("before"), cid("after")
    containers += [(other, c1), (other, c2)]
    engine.run(other, c1, netns=before.name)

    r = make_resolver(engine)
    r.start()
    try:
        assert r.follower.wait_up(10)
        assert r.size() == 0 and r.by_ip(before.v4) is None  # not listed
        engine.run(other, c2, netns=after.name)
        marker = settle(engine, r, nets, containers)  # its events come after c2's
        assert r.by_ip(after.v4) is None
        assert r.by_ifindex(after.host_ifindex()) is None
        assert r.index.owners() == marker
    finally:
        r.stop()


# --- 5. containerd absent at start, started, restarted ---------------------------------


def test_absent_then_started_then_restarted_containerd(nets: Callable[[], Net]) -> None:
    with containerd_engine(started=False) as engine:
        r = make_resolver(engine)
        r.start()  # must neither block nor raise with no containerd
        try:
            assert r.alive and not r.up
            wait_for(lambda: r.follower.sessions >= 2, timeout=5, what="a retry")
            assert not r.up and r.size() == 0

            engine.start()
            engine.import_image("default")
            keep, lose = nets(), nets()
            c_keep, c_lose = cid("keep"), cid("lose")
            engine.run("default", c_keep, netns=keep.name, image="retinad.test/busybox:1")
            pid_lose = engine.run("default", c_lose, netns=lose.name)
            ep_keep = Endpoint("default", c_keep, "container", "retinad.test/busybox:1")
            ep_lose = Endpoint("default", c_lose, "container", c_lose)
            assert r.follower.wait_up(10), "never up once containerd ran"
            polled(
                lambda: (
                    r.index.owners()
                    == {owner(keep): keep.claim(ep_keep), owner(lose): lose.claim(ep_lose)}
                ),
                "both containers",
                timeout=5,
            )

            # Restart: while containerd is down, one task dies behind its back. The new
            # session must relist (sessions grows) and the index must be exact again.
            sessions = r.follower.sessions
            engine.stop()
            wait_for(lambda: not r.up, timeout=5, what="up to drop with containerd gone")
            os.kill(pid_lose, signal.SIGKILL)
            engine.start()
            assert r.follower.wait_up(10), "never up again after the restart"
            assert r.follower.sessions > sessions
            polled(
                lambda: r.index.owners() == {owner(keep): keep.claim(ep_keep)},
                "the resync to drop the dead task",
                timeout=5,
            )
            # and events flow in the new session
            late_net, late = nets(), cid("late")
            engine.run("default", late, netns=late_net.name)
            ep_late = Endpoint("default", late, "container", late)
            polled(lambda: r.by_ip(late_net.v4) == ep_late, "a container after the restart")
        finally:
            r.stop()
        assert not r.alive


# --- resources ------------------------------------------------------------------------


def children() -> set[int]:
    me, out = os.getpid(), set()
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == me:
                out.add(int(d))
    return out


def test_no_leaked_fds_threads_or_processes(
    engine: ContainerdEngine, nets: Callable[[], Net], containers: list[tuple[str, str]]
) -> None:
    net = nets()
    c = cid("fds")
    containers.append(("default", c))
    engine.run("default", c, netns=net.name)
    fds, tasks, kids = (
        len(os.listdir("/proc/self/fd")),
        len(os.listdir("/proc/self/task")),
        children(),
    )
    threads = threading.active_count()
    for _ in range(3):
        r = make_resolver(engine)
        r.start()
        try:
            assert r.follower.wait_up(10)
            assert r.size() == 1  # its namespace was read
            assert children() == kids  # no process forked to read it
        finally:
            r.stop()
    assert threading.active_count() == threads
    # gRPC closes its pollers and threads asynchronously after the channel closes
    wait_for(
        lambda: (
            len(os.listdir("/proc/self/fd")) <= fds and len(os.listdir("/proc/self/task")) <= tasks
        ),
        timeout=5,
        what="fds and OS threads back to where they were",
    )
