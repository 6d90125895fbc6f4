"""One lookup rule for forward and drop series, shown with real drops by the real daemon.

retinad (``python -m retinad``, advanced mode, packetparser and dropreason) runs with two
resolvers that name the same address differently: ``static`` has a /32 for the address
inside a network namespace "container", and ``host`` names that container's veth after its
netns. UDP datagrams from the host to a port nothing listens on in the container are
counted twice, and exactly: forward, on the container's veth (its ingress), and as drops,
when the container's UDP stack frees them with reason NO_SOCKET (the destination of an
inbound packet is the drop's endpoint). Both series must carry the name of the resolver
that comes first in ``[resolvers] order``, whichever that is, and no packet may be counted
under the other name.
"""

from __future__ import annotations

import secrets
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.daemon_proc import DaemonProcess, NotifySocket, http_get, wait_for
from tests.netns import Netns, VethLink, delete_link, veth_to

FWD = "retinad_endpoint_forward_packets_total"
DROP = "retinad_endpoint_drop_packets_total"
N = 25
STATIC_NAME = "rt-static-db"
SENDER = """
import socket, sys
dst, n = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(n):
    s.sendto(b"d" * 64, (dst, 9))  # unconnected: the port unreachable answers cannot stop it
s.close()
"""

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> Samples:
    status, body = http_get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200
    out: Samples = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def total(samples: Samples, metric: str, **labels: str) -> float:
    """Sum of ``metric`` over the series carrying all of ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == metric and want <= ls)


@pytest.fixture
def container() -> Iterator[VethLink]:
    ns = Netns()
    octet = 100 + secrets.randbelow(100)
    link = veth_to(ns, host_ip=f"10.213.{octet}.1", peer_ip=f"10.213.{octet}.2")
    try:
        yield link
    finally:
        delete_link(link.host)
        ns.close()


@pytest.mark.parametrize("first", ["static", "host"])
def test_forward_and_drop_series_name_the_address_by_the_same_resolver(
    container: VethLink, first: str, tmp_path: Path
) -> None:
    workdir = tmp_path
    order = ["static", "host"] if first == "static" else ["host", "static"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    cfg = workdir / "retinad.toml"
    cfg.write_text(
        f'[web]\nlisten_address = ["127.0.0.1:{port}"]\n'
        '[metrics]\nmode = "advanced"\n'
        "[packetparser]\ncontainer_interfaces = true\n"
        "[dropreason]\nenabled = true\n"
        f"[resolvers]\norder = {order!r}\n".replace("'", '"')
        + "[[resolvers.static.endpoints]]\n"
        f'cidr = "{container.peer_ip}/32"\nname = "{STATIC_NAME}"\n'
    )
    static = {"namespace": "", "name": STATIC_NAME, "workload_kind": "static",
              "workload_name": STATIC_NAME}  # fmt: skip
    host = {"namespace": "", "name": container.ns.name, "workload_kind": "interface",
            "workload_name": container.host}  # fmt: skip
    want, other = (static, host) if first == "static" else (host, static)

    notify = NotifySocket(workdir / "notify.sock")
    d = DaemonProcess(
        ["--config.file", str(cfg)],
        workdir=workdir,
        env={"NOTIFY_SOCKET": str(notify.path)},
    )
    try:
        notify.wait_for("READY=1", timeout=120)
        idx = str(container.ifindex())
        wait_for(
            lambda: total(scrape(port), "retinad_interface_info", ifindex=idx, role="container"),
            what="the container veth attached",
        )
        subprocess.run(
            [sys.executable, "-c", SENDER, container.peer_ip, str(N)],
            check=True,
            capture_output=True,
            timeout=30,
        )

        def counts() -> tuple[float, float, float, float]:
            now = scrape(port)
            return (
                total(now, FWD, direction="ingress", **want),
                total(now, DROP, reason="NO_SOCKET", direction="ingress", **want),
                total(now, FWD, **other),
                total(now, DROP, **other),
            )

        try:
            wait_for(lambda: counts() == (N, N, 0, 0), what=f"{N} forwards and drops")
        except AssertionError:
            raise AssertionError(f"want ({N}, {N}, 0, 0), got {counts()}") from None
        # Exactly two series name the address's packets: its forwards and its drops.
        final = scrape(port)
        named = {
            (n, ls)
            for (n, ls), v in final.items()
            if n in (FWD, DROP) and v and ("name", want["name"]) in ls
        }
        assert named == {
            (FWD, frozenset({**want, "direction": "ingress"}.items())),
            (DROP, frozenset({**want, "direction": "ingress", "reason": "NO_SOCKET"}.items())),
        }
    finally:
        notify.close()
        rc = d.stop()
        if rc != 0:
            print(d.log, file=sys.stderr)
        assert rc == 0
