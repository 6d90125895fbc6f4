"""Interface roles on a real Docker host: the real daemon next to a real dockerd.

Docker creates a container's veth pair in the host namespace, brings the host end up on
the bridge, and only then moves the other end into the container's namespace: for that
moment the host end is a veth whose peer is still here, which would read as a host
interface. retinad must attach it once, as a container veth, and never as host
(``test_new_container_veth_is_attached_once_as_container``); every interface of a Docker
host must have the role the kernel's facts give it
(``test_roles_on_docker0_and_a_user_defined_bridge``).

The machine is shared with other test sessions that add and remove links of their own, so
exact counts are taken over the interfaces this test knows (the uplink, docker0, the
user-defined bridge, each container's host-side veth), and every other row of
``retinad_interface_info`` is checked against the kernel's own record of that interface.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.daemon_proc import DaemonProcess, NotifySocket, http_get, wait_for
from tests.docker_engine import Container, DockerEngine, Things, engine_session, unique

INFO = "retinad_interface_info"
Row = tuple[str, str]
"""(interface name, role) of one retinad_interface_info series."""


@dataclass
class Daemon:
    proc: DaemonProcess
    port: int

    def info(self) -> dict[int, Row]:
        """ifindex -> (interface, role) from one scrape of retinad_interface_info."""
        status, body = http_get(f"http://127.0.0.1:{self.port}/metrics")
        assert status == 200
        rows: dict[int, Row] = {}
        for family in text_string_to_metric_families(body):
            for s in family.samples:
                if s.name == INFO:
                    rows[int(s.labels["ifindex"])] = (s.labels["interface"], s.labels["role"])
        return rows

    def attached(self, role: str) -> float:
        status, body = http_get(f"http://127.0.0.1:{self.port}/metrics")
        assert status == 200
        for family in text_string_to_metric_families(body):
            for s in family.samples:
                if s.name == "retinad_attached_interfaces" and s.labels["role"] == role:
                    return float(s.value)
        raise AssertionError("no retinad_attached_interfaces series for role " + role)


@pytest.fixture(scope="module")
def docker_engine() -> Iterator[DockerEngine]:
    with engine_session() as engine:
        yield engine


@pytest.fixture(scope="module")
def things(docker_engine: DockerEngine) -> Iterator[Things]:
    t = Things(docker_engine)
    try:
        yield t
    finally:
        t.close()


@pytest.fixture(scope="module")
def daemon(
    docker_engine: DockerEngine, things: Things, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Daemon]:
    workdir = tmp_path_factory.mktemp("docker-roles")
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
        '[log]\nlevel = "info"\n'
    )
    notify = NotifySocket(workdir / "notify.sock")
    d = DaemonProcess(
        ["--config.file", str(cfg)], workdir=workdir, env={"NOTIFY_SOCKET": str(notify.path)}
    )
    try:
        notify.wait_for("READY=1", timeout=120)
        yield Daemon(d, port)
    finally:
        notify.close()
        rc = d.stop()
        if rc != 0:
            print(d.log, file=sys.stderr)
        assert rc == 0


# --- what the kernel says, independently of retinad -------------------------------------


def kernel_links() -> dict[int, dict[str, object]]:
    """ifindex -> ``ip -j -d link`` record of every interface of this namespace."""
    out = subprocess.run(
        ["ip", "-j", "-d", "link", "show"], capture_output=True, text=True, check=True
    ).stdout
    return {int(rec["ifindex"]): rec for rec in json.loads(out)}


def default_route_ifindexes() -> set[int]:
    out = subprocess.run(
        ["ip", "-j", "route", "show", "default"], capture_output=True, text=True, check=True
    ).stdout
    names = {r["dev"] for r in json.loads(out) if "dev" in r}
    return {i for i, rec in kernel_links().items() if rec["ifname"] in names}


def kernel_role(rec: dict[str, object], uplinks: set[int]) -> str | None:
    """The role the default selection gives an interface, from the kernel's record: a veth
    whose peer is in another namespace is a container's (unless it is our uplink); any
    other interface that is up and not loopback is the host's."""
    kind = rec.get("linkinfo", {}).get("info_kind", "")  # type: ignore[attr-defined]
    flags = rec.get("flags", [])
    if kind == "veth" and "link_netnsid" in rec and int(str(rec["ifindex"])) not in uplinks:
        return "container"
    if "UP" in flags and "LOOPBACK" not in flags:  # type: ignore[operator]
        return "host"
    return None


def veth_of(things: Things, c: Container) -> dict[str, int]:
    """The container's interface name -> the ifindex of its host-side veth."""
    return {name: peer for name, (_, peer) in things.host_veths(c).items()}


def attach_lines(log: str, ifname: str) -> list[str]:
    return re.findall(rf"attached to {re.escape(ifname)} \(ifindex \d+\) as \w+", log)


# --- the tests ----------------------------------------------------------------------------


def test_new_container_veth_is_attached_once_as_container(daemon: Daemon, things: Things) -> None:
    """A container started while retinad runs: its veth shows up in retinad_interface_info
    as container in the first scrape it appears in (and in every later one), and the log
    says it was attached exactly once, as container."""
    scrapes: list[dict[int, Row]] = []
    stop = threading.Event()
    errors: list[BaseException] = []

    def scrape_fast() -> None:
        # Scrape as fast as the daemon answers, from before the container exists until its
        # veth has been seen a few times: a moment it carried the host role is caught here.
        try:
            while not stop.is_set():
                scrapes.append(daemon.info())
        except BaseException as err:
            errors.append(err)

    scraper = threading.Thread(target=scrape_fast, daemon=True)
    scraper.start()
    try:
        late = things.run(unique("rt-role"))
        (host_ifindex,) = veth_of(things, late).values()
        ifname = str(kernel_links()[host_ifindex]["ifname"])
        wait_for(
            lambda: sum(host_ifindex in rows for rows in scrapes) >= 5,
            what="five scrapes showing the new veth",
        )
    finally:
        stop.set()
        scraper.join(10)
    seen = [rows[host_ifindex] for rows in scrapes if host_ifindex in rows]
    assert errors == []
    assert {role for _, role in seen} == {"container"}, seen
    assert seen[0] == (ifname, "container")
    assert attach_lines(daemon.proc.log, ifname) == [
        f"attached to {ifname} (ifindex {host_ifindex}) as container"
    ]


def test_roles_on_docker0_and_a_user_defined_bridge(daemon: Daemon, things: Things) -> None:
    """Containers on docker0, on a user-defined bridge network and on both: host
    interfaces are the uplink, docker0 and the br-* bridge; each container's host-side veth
    (two for the container on both networks) is a container interface; every other row of
    retinad_interface_info agrees with the kernel's record of that interface."""
    net = things.network(unique("rt-rolenet"))
    net_id = things.api.inspect_network(net)["Id"]
    on_default = things.run(unique("rt-role0"))
    on_user = things.run(unique("rt-role1"), network_mode=net)
    on_both = things.connect(things.run(unique("rt-role2")), net)

    veths = {
        idx: who
        for c, who in ((on_default, "default"), (on_user, "user"), (on_both, "both"))
        for idx in veth_of(things, c).values()
    }
    assert sorted(veths.values()) == ["both", "both", "default", "user"]
    links = kernel_links()
    by_name = {str(rec["ifname"]): idx for idx, rec in links.items()}
    uplinks = default_route_ifindexes()
    bridge = f"br-{net_id[:12]}"
    want: dict[int, Row] = {by_name["docker0"]: ("docker0", "host")}
    want[by_name[bridge]] = (bridge, "host")
    want.update({u: (str(links[u]["ifname"]), "host") for u in uplinks})
    want.update({idx: (str(links[idx]["ifname"]), "container") for idx in veths})
    assert len(want) == 2 + len(uplinks) + 4

    wait_for(
        lambda: {i: r for i, r in daemon.info().items() if i in want} == want,
        what=f"roles {sorted(want.values())}",
    )
    before = kernel_links()
    rows = daemon.info()
    after = kernel_links()
    got = {i: r for i, r in rows.items() if i in want}
    assert got == want
    assert sum(role == "container" for _, role in got.values()) == 4
    assert sum(role == "host" for _, role in got.values()) == 2 + len(uplinks)
    # Every other interface: the role its kernel record gives it, when that record did not
    # change around the scrape (other sessions' links come and go meanwhile).
    for idx, (name, role) in rows.items():
        if idx in before and before[idx] == after.get(idx):
            assert (name, role) == (before[idx]["ifname"], kernel_role(before[idx], uplinks))
    # The per-role gauge counts the same interfaces as the info rows (both from one scrape
    # apiece, so compare when no link came or went in between).
    wait_for(
        lambda: (
            daemon.attached("container") == sum(r == "container" for _, r in daemon.info().values())
        ),
        what="retinad_attached_interfaces{role=container} agrees with the info rows",
    )


def test_log_never_attached_a_container_veth_as_host(daemon: Daemon, things: Things) -> None:
    """Over the whole module run: no veth of a container this module started was ever
    attached as host, and none was attached twice."""
    links = kernel_links()
    ours = []
    for cid in things.containers:
        info = things.inspect(cid)
        if info.info["State"]["Running"]:
            ours += [str(links[i]["ifname"]) for i in veth_of(things, info).values() if i in links]
    assert ours, "the earlier tests left running containers"
    log = daemon.proc.log
    for ifname in ours:
        lines = attach_lines(log, ifname)
        assert len(lines) == 1 and lines[0].endswith(" as container"), lines
