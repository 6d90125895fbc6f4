"""The real daemon with flow events on, next to a real dockerd: `retinad flows` names both
containers of a flow, and the flow log holds the same records.

Traffic is UDP sent from inside one container's network namespace to the other (see
test_docker_counts.py for why that is the container's own traffic and why the counts are
exact).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from retinad.resolvers.docker import COMPOSE_PROJECT, COMPOSE_SERVICE
from tests.daemon_proc import RETINAD, DaemonProcess, NotifySocket, http_get, wait_for
from tests.docker_engine import DockerEngine, engine_session, made_by_test, unique
from tests.e2e.test_docker_counts import SENDER


@pytest.fixture(scope="module")
def docker_engine() -> Iterator[DockerEngine]:
    with engine_session() as engine:
        yield engine


def test_retinad_flows_shows_a_flow_between_two_named_containers(
    docker_engine: DockerEngine, tmp_path: Path
) -> None:
    with made_by_test(docker_engine) as things:
        web = things.run(
            unique("rt-fweb"), labels={COMPOSE_PROJECT: "shop", COMPOSE_SERVICE: "web"}
        )
        db = things.run(unique("rt-fdb"))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        flows_sock, flow_log = tmp_path / "flows.sock", tmp_path / "flows.json"
        cfg = tmp_path / "retinad.toml"
        cfg.write_text(
            f'[web]\nlisten_address = ["127.0.0.1:{port}"]\n'
            "[packetparser]\ncontainer_interfaces = true\n"
            '[packetparser.interfaces]\ninclude = ["rt-none"]\n'
            "[packetparser.events]\nenabled = true\n"
            f'aggregation_level = "high"\nsocket = "{flows_sock}"\n'
            f'[packetparser.events.log]\npath = "{flow_log}"\n'
            "[dropreason]\nenabled = false\n"
            '[resolvers]\norder = ["docker", "host"]\n'
            f'[resolvers.docker]\nhost = "{docker_engine.host}"\n'
        )
        notify = NotifySocket(tmp_path / "notify.sock")
        d = DaemonProcess(["--config.file", str(cfg)], workdir=tmp_path,
                          env={"NOTIFY_SOCKET": str(notify.path)})  # fmt: skip
        try:
            notify.wait_for("READY=1", timeout=120)
            wait_for(
                lambda: (
                    'retinad_resolver_up{resolver="docker"} 1.0'
                    in http_get(f"http://127.0.0.1:{port}/metrics")[1]
                ),
                what="docker resolver up",
            )
            follow = subprocess.Popen(
                [*RETINAD, "flows", "--socket", str(flows_sock), "--name", web.name,
                 "--protocol", "udp", "--output", "json", "--count", "2"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip

            # A flow is reported on its first packet: keep sending until the client,
            # which connects asynchronously, has seen it at both veths.
            def shown() -> bool:
                cmd = ["nsenter", f"--net=/proc/{web.pid}/ns/net", sys.executable, "-c",
                       SENDER, str(db.ip()), "9", "1", "100"]  # fmt: skip
                sent = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
                state = docker_engine.api.inspect_container(web.id)["State"]
                assert sent.returncode == 0, (sent.stderr, state, web.pid)
                return follow.poll() is not None

            wait_for(shown, timeout=30, what="retinad flows printed 2 records")
            out, err = follow.communicate(timeout=10)
            assert follow.returncode == 0, err
        finally:
            notify.close()
            rc = d.stop()
            if rc != 0:
                print(d.log, file=sys.stderr)
        assert rc == 0
    recs = [json.loads(x) for x in out.splitlines()]
    assert len(recs) == 2
    # Seen where web sends (its veth, egress) and where db receives (its veth, ingress).
    assert {r["direction"] for r in recs} == {"egress", "ingress"}
    for r in recs:
        assert (r["src_ip"], r["dst_ip"], r["dst_port"]) == (str(web.ip()), str(db.ip()), 9)
        assert r["src"] == {"name": web.name, "namespace": "shop",
                            "workload_kind": "compose_service", "workload_name": "web"}  # fmt: skip
        assert r["dst"] == {"name": db.name, "namespace": "", "workload_kind": "container",
                            "workload_name": db.name}  # fmt: skip
        assert r["interface"]["role"] == "container"
        assert r["reason"] == "new" and r["packets"] == 1
    # The flow log got the same flow (and every later report of it, flushed on stop).
    logged = [json.loads(x) for x in flow_log.read_text().splitlines()]
    mine = [r for r in logged if r["src_ip"] == str(web.ip()) and r["dst_ip"] == str(db.ip())]
    sent_at_db = sum(r["packets"] for r in mine if r["direction"] == "ingress")
    sent_at_web = sum(r["packets"] for r in mine if r["direction"] == "egress")
    assert sent_at_db == sent_at_web >= 1
