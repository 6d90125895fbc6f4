"""The docker resolver against a real dockerd (tests/docker_engine.py): no mocks.

Every expectation is exact: the Endpoint a container must be, the addresses and host-side
veths it must claim (the veths taken from the container's own sysfs, not from the
resolver's method), and nothing claimed for what must not be. Waiting is always a poll
with a deadline; the events are what make the index change.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import secrets
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import MappingProxyType

import pytest

from retinad.config.schema import DockerResolverSettings, ResolverSettings, Settings
from retinad.model import Endpoint
from retinad.resolvers.base import IPAddress, ResolverContext
from retinad.resolvers.docker import (
    COMPOSE_PROJECT,
    COMPOSE_SERVICE,
    DockerResolver,
    container_ips,
    create,
    daemon_since,
    endpoint_of,
    has_own_netns,
    running_pid,
)
from retinad.resolvers.index import Claim
from tests.daemon_proc import wait_for
from tests.docker_engine import (
    HOST,
    LABEL,
    Container,
    DockerEngine,
    Things,
    engine_session,
    host_link_names,
    made_by_test,
    unique,
)


def make_resolver(host: str, on_change: Callable[[], None] = lambda: None) -> DockerResolver:
    """Built the way the daemon builds it: create(ctx) from a whole Settings."""
    settings = Settings(resolvers=ResolverSettings(docker=DockerResolverSettings(host=host)))
    ctx = ResolverContext(settings, logging.getLogger("test.docker"), on_change)
    return create(ctx)


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[DockerEngine]:
    with engine_session() as engine:
        yield engine


@pytest.fixture
def things(docker_engine: DockerEngine) -> Iterator[Things]:
    with made_by_test(docker_engine) as t:
        yield t


@pytest.fixture
def resolver(docker_engine: DockerEngine) -> Iterator[DockerResolver]:
    r = make_resolver(docker_engine.host)
    r.start()
    try:
        assert r.follower.wait_up(10), "resolver never in sync with a running dockerd"
        yield r
    finally:
        r.stop()


def endpoint(c: Container, **labels: str) -> Endpoint:
    """What container ``c`` (created by Things.run with ``labels``) must resolve to."""
    service = labels.get(COMPOSE_SERVICE, "")
    return Endpoint(
        namespace=labels.get(COMPOSE_PROJECT, ""),
        name=c.name,
        workload_kind="compose_service" if service else "container",
        workload_name=service or c.name,
        labels=MappingProxyType({LABEL: "1", **labels}),
    )


def host_side(things: Things, c: Container) -> set[int]:
    """Host-side ifindexes of c's interfaces, from its sysfs, checked against the host's
    own ``ip -o link``: each is a veth whose peer is that interface (``vethX@if<N>``)."""
    veths = things.host_veths(c)
    links = host_link_names()
    for own, host in veths.values():
        assert links[host].startswith("veth"), links[host]
        assert links[host].endswith(f"@if{own}"), (links[host], own)
    return {host for _, host in veths.values()}


def named(r: DockerResolver, ip: IPAddress, ep: Endpoint) -> bool:
    return r.by_ip(ip) == ep


def test_containers_on_two_networks_resolve_by_every_ip_and_host_veth(
    things: Things,
    resolver: DockerResolver,
) -> None:
    net = things.network(unique("rt-net"), subnet6=f"fd00:{secrets.token_hex(2)}:7e57::/64")
    compose = {COMPOSE_PROJECT: "shop", COMPOSE_SERVICE: "web"}
    web = things.run(unique("rt-web"), labels=compose)
    plain = things.connect(things.run(unique("rt-plain")), net)
    web_ep, plain_ep = endpoint(web, **compose), endpoint(plain)
    assert web_ep.workload_kind == "compose_service" and plain_ep.workload_kind == "container"

    web_veths, plain_veths = host_side(things, web), host_side(things, plain)
    assert len(web_veths) == 1 and len(plain_veths) == 2
    plain_ips = [plain.ip(), plain.ip(net), plain.ip6(net)]
    assert isinstance(plain.ip6(net), ipaddress.IPv6Address)
    want = {
        web.id: Claim.of(web_ep, [web.ip()], web_veths),
        plain.id: Claim.of(plain_ep, plain_ips, plain_veths),
    }
    # The connect event is the last one: once it is handled the index is final.
    wait_for(lambda: {k: resolver.index.get(k) for k in want} == want, what="both claims")

    assert resolver.by_ip(web.ip()) == web_ep
    for ip in plain_ips:
        assert resolver.by_ip(ip) == plain_ep, ip
    for idx in web_veths:
        assert resolver.by_ifindex(idx) == web_ep
    for idx in plain_veths:
        assert resolver.by_ifindex(idx) == plain_ep
    gateway = ipaddress.ip_address(web.info["NetworkSettings"]["Networks"]["bridge"]["Gateway"])
    assert resolver.by_ip(gateway) is None  # the host's docker0 address is not a container's
    assert resolver.by_ifindex(1) is None
    assert resolver.up and resolver.alive
    assert resolver.size() == len(resolver.index.owners()) >= 2


def _fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def _children() -> set[int]:
    """Pids whose parent is this process (dockerd, if this session started it)."""
    kids: set[int] = set()
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == os.getpid():
            kids.add(int(entry.name))
    return kids


def test_stop_unblocks_the_event_read_promptly_and_leaves_nothing_open(
    docker_engine: DockerEngine,
) -> None:
    docker_engine.api.ping()
    fds, threads, children = _fds(), threading.active_count(), _children()
    r = make_resolver(docker_engine.host)
    r.start()
    assert r.follower.wait_up(10)
    # No event is coming: the session thread is blocked reading the event stream.
    t0 = time.monotonic()
    r.stop()
    took = time.monotonic() - t0
    # a stop that waited for the blocked read would take its 10 s read timeout; under load a
    # prompt stop still takes a second or more, so the bound sits between the two
    assert took < 5.0, f"stop took {took:.3f}s"
    assert not r.alive and not r.up
    assert threading.active_count() == threads
    assert _fds() == fds
    assert _children() == children  # no helper process was forked
    r.stop()  # twice is fine


def test_net_container_shares_its_owners_endpoint_and_net_host_claims_nothing(
    things: Things,
    resolver: DockerResolver,
) -> None:
    owner = things.run(unique("rt-owner"))
    owner_ep = endpoint(owner)
    wait_for(lambda: named(resolver, owner.ip(), owner_ep), what="owner named")
    sharer = things.run(unique("rt-sharer"), network_mode=f"container:{owner.id}")
    hostnet = things.run(unique("rt-hostnet"), network_mode="host")
    marker = things.run(unique("rt-marker"))
    # Events are handled in order: once the marker is named, sharer's and hostnet's start
    # events have been handled too.
    wait_for(lambda: named(resolver, marker.ip(), endpoint(marker)), what="marker named")

    owners = resolver.index.owners()
    assert sharer.id not in owners and hostnet.id not in owners
    veths = host_side(things, owner)
    assert things.host_veths(sharer) == things.host_veths(owner)  # one netns, two containers
    assert owners[owner.id] == Claim.of(owner_ep, [owner.ip()], veths)
    assert resolver.by_ip(owner.ip()) == owner_ep
    for idx in veths:
        assert resolver.by_ifindex(idx) == owner_ep
    # --net=host: every address of the host stays unclaimed by docker.
    out = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True, check=True)
    host_ips = [ipaddress.ip_interface(line.split()[3]).ip for line in out.stdout.splitlines()]
    assert host_ips
    for ip in host_ips:
        assert resolver.by_ip(ip) is None, ip

    things.remove(owner)
    wait_for(lambda: owner.id not in resolver.index.owners(), what="owner forgotten")
    assert resolver.by_ip(owner.ip()) is None
    for idx in veths:
        assert resolver.by_ifindex(idx) is None
    assert sharer.id not in resolver.index.owners()  # the sharer does not take over


def test_new_container_named_from_its_event_then_disconnect_and_removal_forget_it(
    things: Things,
    resolver: DockerResolver,
) -> None:
    late = things.run(unique("rt-late"))
    ep = endpoint(late)
    # from its event (the resync runs every 300 s): how fast is a bench figure, not a bound
    wait_for(lambda: named(resolver, late.ip(), ep), timeout=20, what="new container named")
    bridge_veths = host_side(things, late)
    assert {i: resolver.by_ifindex(i) for i in bridge_veths} == dict.fromkeys(bridge_veths, ep)

    net = things.network(unique("rt-net"))
    late = things.connect(late, net)
    wait_for(lambda: named(resolver, late.ip(net), ep), what="IP on the connected network")
    net_veths = host_side(things, late) - bridge_veths
    assert len(net_veths) == 1
    wait_for(lambda: all(resolver.by_ifindex(i) == ep for i in net_veths), what="new veth")

    gone_ip = late.ip(net)
    late = things.disconnect(late, net)
    wait_for(lambda: resolver.by_ip(gone_ip) is None, what="disconnected IP forgotten")
    assert resolver.index.get(late.id) == Claim.of(ep, [late.ip()], bridge_veths)
    for idx in net_veths:
        assert resolver.by_ifindex(idx) is None
    assert resolver.by_ip(late.ip()) == ep

    things.remove(late)
    wait_for(lambda: resolver.by_ip(late.ip()) is None, what="removed container forgotten")
    assert late.id not in resolver.index.owners()
    for idx in bridge_veths:
        assert resolver.by_ifindex(idx) is None


def test_nothing_listening_keeps_serving_and_retries(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    r = make_resolver(f"unix://{tmp_path / 'docker.sock'}")
    t0 = time.monotonic()
    caplog.set_level(logging.WARNING)
    r.start()
    assert time.monotonic() - t0 < 2.0  # start never waits on Docker (it retries for ever)
    try:
        wait_for(lambda: r.follower.sessions >= 2, what="a retry after the backoff")
        assert not r.up
        assert r.alive
        assert r.by_ip(ipaddress.ip_address("172.17.0.2")) is None
        assert r.by_ifindex(1) is None
        assert r.size() == 0
        first = next(m.getMessage() for m in caplog.records)
        assert first.startswith(
            f"docker: not connected (cannot connect to {tmp_path / 'docker.sock'}: no such file "
            "or directory); retrying in "
        ), first
    finally:
        t0 = time.monotonic()
        r.stop()
        assert time.monotonic() - t0 < 5.0  # not the 10 s read timeout
    assert not r.alive


def test_dockerd_absent_at_start_then_available_fills_the_index(
    docker_engine: DockerEngine,
    things: Things,
) -> None:
    docker_engine.require_owned()
    early = things.run(unique("rt-early"))  # keeps running while dockerd is down
    docker_engine.stop()
    r = make_resolver(HOST)
    r.start()
    try:
        wait_for(lambda: r.follower.sessions >= 1, what="a first attempt")
        assert not r.up and r.alive
        assert r.by_ip(early.ip()) is None and r.size() == 0
        docker_engine.start()
        wait_for(lambda: r.up, timeout=15, what="up once dockerd answers")
        # up is set after the list is in the index: no further wait.
        assert r.by_ip(early.ip()) == endpoint(early)
        assert r.index.get(early.id) == Claim.of(
            endpoint(early), [early.ip()], host_side(things, early)
        )
    finally:
        r.stop()


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")


def test_dockerd_restart_goes_down_then_resyncs(
    docker_engine: DockerEngine,
    things: Things,
) -> None:
    docker_engine.require_owned()
    stays, dies = things.run(unique("rt-stays")), things.run(unique("rt-dies"))
    stays_ep = endpoint(stays)
    stays_veths = host_side(things, stays)
    # Every index change, with whether the resolver was up when it happened: a relist
    # changes the index before the session marks itself up, an event after.
    changes: list[tuple[bool, frozenset[str]]] = []
    r = make_resolver(HOST, lambda: changes.append((r.up, frozenset(r.index.owners()))))
    r.start()
    try:
        wait_for(lambda: r.up and named(r, dies.ip(), endpoint(dies)), what="both named")
        sessions = r.follower.sessions

        docker_engine.stop()
        wait_for(lambda: not r.up, what="up False while dockerd is down")
        assert r.alive
        # The index keeps answering with what it last knew.
        assert r.by_ip(stays.ip()) == stays_ep
        assert r.by_ip(dies.ip()) == endpoint(dies)
        # A container dies with no dockerd to report it: only a relist can notice.
        os.kill(dies.pid, signal.SIGKILL)
        wait_for(lambda: _gone(dies.pid), what="container process gone")
        seen = len(changes)

        docker_engine.start()
        wait_for(lambda: r.up, timeout=15, what="up again after the restart")
        assert r.follower.sessions > sessions
        relists = [owners for up, owners in changes[seen:] if not up]
        assert relists, "the index did not change before the new session was up"
        assert dies.id not in relists[-1] and stays.id in relists[-1]
        assert dies.id not in r.index.owners()
        assert r.index.get(stays.id) == Claim.of(stays_ep, [stays.ip()], stays_veths)
        assert r.by_ip(stays.ip()) == stays_ep

        after = things.run(unique("rt-after"))
        wait_for(lambda: named(r, after.ip(), endpoint(after)), timeout=20, what="named")
        mine = {stays.id, dies.id, after.id}
        assert {k for k in r.index.owners() if k in mine} == {stays.id, after.id}
    finally:
        r.stop()


def test_label_and_compose_text_passes_through_unchanged(
    things: Things,
    resolver: DockerResolver,
) -> None:
    labels = {
        COMPOSE_PROJECT: "ünïcødé 名前",
        COMPOSE_SERVICE: 'web "quoted" \\ back\\slash\nsecond line',
        "note": 'a="b",c="d"} 0\n# HELP x y\n{{.Name}} ${HOME} $(id) %s %n \\u0000 🐳',
        "ключ": "значение\ttab\r\n",
    }
    c = things.run("rt-text_" + secrets.token_hex(3) + ".x", labels=labels)
    want = endpoint(c, **labels)
    wait_for(lambda: named(resolver, c.ip(), want), what="named with its labels")
    got = resolver.by_ip(c.ip())
    assert got is not None
    assert got.namespace == "ünïcødé 名前"
    assert got.workload_name == 'web "quoted" \\ back\\slash\nsecond line'
    assert got.workload_kind == "compose_service"
    assert got.name == c.name
    assert dict(got.labels) == {LABEL: "1", **labels}
    assert isinstance(got.labels, MappingProxyType)


def test_untrusted_inspect_json_maps_without_errors() -> None:
    """The pure mapping on literal JSON: odd shapes are skipped, never raised on."""
    assert endpoint_of({}) == Endpoint("", "", "container", "")
    info = {
        "Name": "/solo",
        "Config": {"Labels": {COMPOSE_PROJECT: "p", "n": 5}},
        "HostConfig": {"NetworkMode": "mynet"},
        "State": {"Running": True, "Pid": 7},
        "NetworkSettings": {
            "Networks": {
                "a": {"IPAddress": "", "GlobalIPv6Address": "fd00::1"},
                "b": {"IPAddress": "not-an-ip"},
                "c": None,
                "d": {"IPAddress": "10.1.2.3"},
            }
        },
    }
    assert endpoint_of(info) == Endpoint(
        "p", "solo", "container", "solo", MappingProxyType({COMPOSE_PROJECT: "p"})
    )
    assert container_ips(info) == [
        ipaddress.ip_address("fd00::1"),
        ipaddress.ip_address("10.1.2.3"),
    ]
    assert running_pid(info) == 7
    assert running_pid({"State": {"Running": False, "Pid": 7}}) == 0
    assert running_pid({"State": {"Running": True, "Pid": "7"}}) == 0
    modes = ["host", "none", "container:abc", "default", "bridge", "mynet", ""]
    assert [has_own_netns({"HostConfig": {"NetworkMode": m}}) for m in modes] == [
        False, False, False, True, True, True, True,
    ]  # fmt: skip
    # since: the daemon's clock floored to the second, whatever its zone; else local time.
    assert daemon_since({"SystemTime": "2026-11-21T17:36:08.999999999Z"}) == 1795282568
    assert daemon_since({"SystemTime": "2026-11-21T18:36:08.5+01:00"}) == 1795282568
    now = int(time.time())
    assert now - 2 <= daemon_since({"SystemTime": "garbage"}) <= now
