"""The real daemon with ``[resolvers] order = ["docker", "host"]`` on real Docker containers.

retinad (``python -m retinad``, advanced mode, packetparser on every container veth) runs
next to a real dockerd (tests/docker_engine.py). Traffic is UDP with exact datagram
counts: busybox's nc has no UDP mode, so a datagram "from a container" is sent by a Python
process entered into the container's network namespace (``nsenter --net=/proc/<pid>/ns/net``),
which to the kernel is the container's own traffic, through its eth0 and veth. Nothing
else in the containers sends TCP or UDP (busybox sleep, static addresses, no DNS), and ICMP
(port unreachable answers) and ARP are not counted by packetparser, so every expected
value is exact. Counts are compared as deltas from a scrape taken just before sending, so
each test holds on its own whatever ran before it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from retinad.resolvers.docker import COMPOSE_PROJECT, COMPOSE_SERVICE
from tests.daemon_proc import DaemonProcess, NotifySocket, http_get, wait_for
from tests.docker_engine import (
    Container,
    DockerEngine,
    Things,
    engine_session,
    made_by_test,
    unique,
)

PKTS = "retinad_endpoint_forward_packets_total"
BYTES = "retinad_endpoint_forward_bytes_total"
UDP4 = 14 + 20 + 8
"""Ethernet + IPv4 + UDP header bytes on the wire (and in the byte counters)."""

SENDER = """
import socket, sys
dst, port, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
s = socket.socket(socket.AF_INET6 if ":" in dst else socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(n):
    s.sendto(b"r" * size, (dst, port))  # unconnected: an ICMP unreachable cannot stop it
s.close()
"""

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def send_udp(src: Container | None, dst: str, n: int, size: int) -> None:
    """``n`` datagrams of ``size`` payload bytes to ``dst``:9, from ``src``'s network
    namespace (or the host's when None)."""
    cmd = [sys.executable, "-c", SENDER, dst, "9", str(n), str(size)]
    if src is not None:
        cmd = ["nsenter", f"--net=/proc/{src.pid}/ns/net", *cmd]
    subprocess.run(cmd, check=True, capture_output=True, timeout=30)


@dataclass
class Stack:
    engine: DockerEngine
    things: Things
    daemon: DaemonProcess
    port: int
    web: Container
    db: Container

    def scrape(self) -> Samples:
        status, body = http_get(f"http://127.0.0.1:{self.port}/metrics")
        assert status == 200
        out: Samples = {}
        for family in text_string_to_metric_families(body):
            for s in family.samples:
                out[(s.name, frozenset(s.labels.items()))] = s.value
        return out


def value(samples: Samples, metric: str, labels: dict[str, str]) -> float:
    """The sample's value; 0 for a series that does not exist (yet)."""
    return samples.get((metric, frozenset(labels.items())), 0.0)


def ep(c: Container, direction: str, project: str = "", service: str = "") -> dict[str, str]:
    """The endpoint labels docker gives container ``c``."""
    return {
        "direction": direction,
        "namespace": project,
        "name": c.name,
        "workload_kind": "compose_service" if service else "container",
        "workload_name": service or c.name,
    }


def docker_endpoints(engine: DockerEngine) -> int:
    """Running containers with a network namespace of their own, as Docker lists them."""
    modes = [c["HostConfig"]["NetworkMode"] for c in engine.api.containers()]
    return sum(m not in ("host", "none") and not m.startswith("container:") for m in modes)


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[DockerEngine]:
    with engine_session() as engine:
        yield engine


@pytest.fixture(scope="module")
def stack(docker_engine: DockerEngine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("docker-e2e")
    with made_by_test(docker_engine) as things:
        web = things.run(unique("rt-web"), labels={COMPOSE_PROJECT: "shop", COMPOSE_SERVICE: "web"})
        db = things.run(unique("rt-db"))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        cfg = workdir / "retinad.toml"
        cfg.write_text(
            f'[web]\nlisten_address = ["127.0.0.1:{port}"]\n'
            '[metrics]\nmode = "advanced"\n'
            "[packetparser]\ncontainer_interfaces = true\n"
            "[dropreason]\nenabled = false\n"
            '[resolvers]\norder = ["docker", "host"]\n'
            f'[resolvers.docker]\nhost = "{docker_engine.host}"\n'
        )
        notify = NotifySocket(workdir / "notify.sock")
        d = DaemonProcess(
            ["--config.file", str(cfg)], workdir=workdir, env={"NOTIFY_SOCKET": str(notify.path)}
        )
        try:
            notify.wait_for("READY=1", timeout=120)
            st = Stack(docker_engine, things, d, port, web, db)
            wait_for(
                lambda: value(st.scrape(), "retinad_resolver_up", {"resolver": "docker"}) == 1,
                what="docker resolver up",
            )
            # Veths that exist at start are attached before READY=1; other tests' veths
            # may come and go meanwhile, so only a lower bound is checked.
            attached = value(st.scrape(), "retinad_attached_interfaces", {"role": "container"})
            assert attached >= 2
            yield st
        finally:
            notify.close()
            rc = d.stop()
            if rc != 0:
                print(d.log, file=sys.stderr)
            assert rc == 0


def test_udp_between_containers_and_host_counted_exactly_per_container(stack: Stack) -> None:
    web, db = stack.web, stack.db
    w = {d: ep(web, d, "shop", "web") for d in ("ingress", "egress")}
    b = {d: ep(db, d) for d in ("ingress", "egress")}
    gateway = web.info["NetworkSettings"]["Networks"]["bridge"]["Gateway"]
    before = stack.scrape()

    send_udp(web, str(db.ip()), 7, 100)  # web egress, db ingress
    send_udp(db, str(web.ip()), 5, 200)  # db egress, web ingress
    send_udp(web, gateway, 3, 50)  # web egress (to the host)
    send_udp(None, str(web.ip()), 4, 60)  # web ingress (from the host)

    want = {
        (PKTS, "web", "egress"): 7 + 3,
        (BYTES, "web", "egress"): 7 * (UDP4 + 100) + 3 * (UDP4 + 50),
        (PKTS, "web", "ingress"): 5 + 4,
        (BYTES, "web", "ingress"): 5 * (UDP4 + 200) + 4 * (UDP4 + 60),
        (PKTS, "db", "egress"): 5,
        (BYTES, "db", "egress"): 5 * (UDP4 + 200),
        (PKTS, "db", "ingress"): 7,
        (BYTES, "db", "ingress"): 7 * (UDP4 + 100),
    }

    def deltas() -> dict[tuple[str, str, str], float]:
        now = stack.scrape()
        labels = {"web": w, "db": b}
        return {
            (m, who, d): value(now, m, labels[who][d]) - value(before, m, labels[who][d])
            for (m, who, d) in want
        }

    try:
        wait_for(lambda: deltas() == want, what="exact per-container counts")
    except AssertionError:
        raise AssertionError(f"want {want}, got {deltas()}") from None


def test_container_started_after_retinad_is_named_from_its_event(stack: Stack) -> None:
    late = stack.things.run(unique("rt-late"))
    gateway = late.info["NetworkSettings"]["Networks"]["bridge"]["Gateway"]

    def named() -> bool:
        send_udp(late, gateway, 1, 10)
        return value(stack.scrape(), PKTS, ep(late, "egress")) > 0

    wait_for(named, timeout=20, what="the new container's series")


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")


def test_dockerd_restart_keeps_counting_exactly_and_resyncs(stack: Stack) -> None:
    stack.engine.require_owned()
    web, db = stack.web, stack.db
    victim = stack.things.run(unique("rt-victim"))
    out, inn = ep(web, "egress", "shop", "web"), ep(db, "ingress")

    def up() -> float:
        return value(stack.scrape(), "retinad_resolver_up", {"resolver": "docker"})

    def endpoints() -> float:
        return value(stack.scrape(), "retinad_resolver_endpoints", {"resolver": "docker"})

    wait_for(lambda: endpoints() == docker_endpoints(stack.engine), what="victim known")
    before = stack.scrape()

    stack.engine.stop()
    wait_for(lambda: up() == 0, what="retinad_resolver_up 0 while dockerd is down")
    send_udp(web, str(db.ip()), 6, 100)  # counted while dockerd is down
    os.kill(victim.pid, signal.SIGKILL)  # a change only a relist can see
    wait_for(lambda: _gone(victim.pid), what="victim's process gone")

    stack.engine.start()
    wait_for(lambda: up() == 1, timeout=15, what="retinad_resolver_up 1 again")
    send_udp(web, str(db.ip()), 4, 100)  # and after

    def delta(labels: dict[str, str]) -> tuple[float, float]:
        now = stack.scrape()
        return (
            value(now, PKTS, labels) - value(before, PKTS, labels),
            value(now, BYTES, labels) - value(before, BYTES, labels),
        )

    ten = (10, 10 * (UDP4 + 100))
    wait_for(lambda: delta(out) == ten and delta(inn) == ten, what="10 datagrams each way")
    # Resynced: the index holds exactly what Docker runs now (the victim is gone).
    expected = docker_endpoints(stack.engine)
    assert victim.id not in {c["Id"] for c in stack.engine.api.containers()}
    wait_for(lambda: endpoints() == expected, what=f"{expected} docker endpoints")
    assert stack.daemon.proc.poll() is None
