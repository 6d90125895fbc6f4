"""`retinad flows` against the real plugin's flow socket: live records, filters, root only.

The plugin runs with flow events on in a private namespace (test_packetparser_veth.py);
`python -m retinad flows` runs as a separate process, as root and as nobody.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from retinad.config.schema import EventLogSettings, EventSettings, PacketParserSettings
from retinad.plugins.packetparser import PacketParser
from retinad.resolvers.host import HostResolver
from tests.kernel import test_packetparser_veth as veth
from tests.kernel.pp_helpers import ifindex, make_plugin, send_udp, wait_for
from tests.kernel.test_packetparser_veth import NO_HOST, Containers

containers = veth.containers
resolver = veth.resolver

FLOWS = [sys.executable, "-m", "retinad", "flows"]
NOBODY = 65534


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A directory everyone may traverse (pytest's tmp_path is root-only), so the only
    thing between nobody and the socket is the socket's own mode and the uid check."""
    d = Path(tempfile.mkdtemp(prefix="rt-flows-"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def running(
    containers: Containers, resolver: HostResolver, sock_dir: Path
) -> Iterator[tuple[PacketParser, veth.VethLink, Path]]:
    c = containers.add(51)
    path = sock_dir / "flows.sock"
    ev = EventSettings(enabled=True, aggregation_level="low", socket=str(path),
                       log=EventLogSettings(path=""))  # fmt: skip
    s = PacketParserSettings(interfaces=NO_HOST, container_interfaces=True, events=ev)
    pp = make_plugin(s, resolver=resolver)
    pp.start()
    try:
        wait_for(lambda: ifindex(c.host) in pp.attached(), what="veth attached")
        yield pp, c, path
    finally:
        pp.stop()


def follow(path: Path, *args: str, user: int | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([*FLOWS, "--socket", str(path), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, user=user,
                            cwd=Path(__file__).parents[2])  # fmt: skip


def test_flows_prints_live_records_that_pass_the_filters(
    running: tuple[PacketParser, veth.VethLink, Path],
) -> None:
    pp, c, path = running
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    events = pp.flow_events()
    assert events is not None and events.socket is not None
    proc = follow(path, "--output", "json", "--direction", "egress", "--port", "9999",
                  "--count", "5")  # fmt: skip
    wait_for(lambda: events.socket is not None and events.socket.accepted == 1, what="client")
    send_udp(None, c.peer_ip, 3, 10)  # ingress for the container: filtered out
    send_udp(c.ns, c.host_ip, 5, 100)  # its egress: shown
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    recs = [json.loads(x) for x in out.splitlines()]
    assert len(recs) == 5
    assert {(r["direction"], r["dst_port"], r["bytes"], r["src"]["name"]) for r in recs} == {
        ("egress", 9999, 142, c.ns.name)
    }
    # the text form: one line per flow, both ends named
    proc = follow(path, "--count", "1", "--protocol", "udp")
    wait_for(lambda: events.socket is not None and events.socket.accepted == 2, what="client")
    send_udp(c.ns, c.host_ip, 1, 100)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert f" {c.host} egress UDP {c.ns.name} ({c.peer_ip}:" in out
    assert f"-> testhost ({c.host_ip}:9999) 1 pkt 142 B packet" in out
    wait_for(lambda: events.socket is not None and events.socket.clients == 0, what="hang-ups")


def test_flows_refuses_a_non_root_caller(running: tuple[PacketParser, veth.VethLink, Path]) -> None:
    pp, _c, path = running
    proc = follow(path, "--count", "1", user=NOBODY)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert "permission denied: retinad flows is for root only (running as uid 65534)" in err
    # A socket opened up by hand still serves no one but root: the daemon checks the uid.
    os.chmod(path, 0o666)
    proc = follow(path, "--count", "1", user=NOBODY)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert "refused by the daemon: retinad flows is for root only" in err
    events = pp.flow_events()
    assert events is not None and events.socket is not None and events.socket.refused == 1


def test_flows_says_what_is_wrong_when_no_daemon_listens(sock_dir: Path) -> None:
    proc = follow(sock_dir / "absent.sock")
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert "No such file or directory: is retinad running with [packetparser.events]" in err
