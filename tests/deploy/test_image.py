"""The container image (Dockerfile, scripts/build-image.sh), run on the suite's dockerd.

The image is built here from this checkout (its base is the debootstrap'd bookworm
rootfs cached per machine, since no registry is reachable). retinad runs in it with the
least privilege docs/KUBERNETES.md lists (host network and PID namespaces, the
capabilities and read-only mounts below, the Docker socket read-only) and counts exact
UDP traffic between two other containers, named through the docker resolver.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.daemon_proc import http_get, wait_for
from tests.deploy.scrape import serving
from tests.docker_engine import LABEL, Container, DockerEngine, Things, unique

REPO_ROOT = Path(__file__).resolve().parents[2]
PKTS = "retinad_endpoint_forward_packets_total"
BYTES = "retinad_endpoint_forward_bytes_total"
UDP4 = 14 + 20 + 8

#: What the container needs, and nothing more (why: docs/KUBERNETES.md): every default
#: capability is dropped. Docker 20.10 knows no CAP_BPF/CAP_PERFMON, so SYS_ADMIN stands
#: in for both.
CAPS = ["SYS_ADMIN", "NET_ADMIN", "SYS_PTRACE"]
BINDS = [
    "/lib/modules:/lib/modules:ro",
    "/usr/src:/usr/src:ro",
    "/sys/kernel/tracing:/sys/kernel/tracing:ro",
    "/var/run/docker.sock:/var/run/docker.sock:ro",
]

SENDER = """
import socket, sys
dst, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(n):
    s.sendto(b"i" * size, (dst, 9))
"""

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@dataclass
class Daemon:
    things: Things
    container: Container
    port: int

    def scrape(self) -> Samples:
        status, body = http_get(f"http://127.0.0.1:{self.port}/metrics")
        assert status == 200
        return {
            (s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(body)
            for s in fam.samples
        }

    def logs(self) -> str:
        return bytes(self.things.api.logs(self.container.id)).decode(errors="replace")


def run_retinad(things: Things, image: str, config: Path, port: int) -> Container:
    """retinad's container exactly as docs/KUBERNETES.md's `docker run` line has it."""
    api: Any = things.api
    host_config = api.create_host_config(
        network_mode="host",
        pid_mode="host",
        cap_drop=["ALL"],
        cap_add=CAPS,
        binds=[*BINDS, f"{config}:/etc/retinad/retinad.toml:ro"],
        read_only=True,
        tmpfs={"/tmp": "size=64m"},
    )
    created = api.create_container(
        image,
        name=unique("rt-retinad"),
        labels={LABEL: "1"},
        host_config=host_config,
        stop_signal="SIGTERM",
    )
    things.containers.append(created["Id"])
    api.start(created["Id"])
    return things.inspect(created["Id"])


def value(samples: Samples, metric: str, labels: dict[str, str]) -> float:
    return samples.get((metric, frozenset(labels.items())), 0.0)


def send_udp(src: Container, dst: str, n: int, size: int) -> None:
    cmd = ["nsenter", f"--net=/proc/{src.pid}/ns/net", sys.executable, "-c", SENDER]
    subprocess.run([*cmd, dst, str(n), str(size)], check=True, capture_output=True, timeout=30)


def ep(c: Container, direction: str) -> dict[str, str]:
    return {
        "direction": direction,
        "namespace": "",
        "name": c.name,
        "workload_kind": "container",
        "workload_name": c.name,
    }


@pytest.fixture
def daemon(
    docker_engine: DockerEngine, retinad_image: str, tmp_path: Path
) -> Iterator[tuple[Daemon, Container, Container]]:
    things = Things(docker_engine)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    config = tmp_path / "retinad.toml"
    config.write_text(
        f'[web]\nlisten_address = ["127.0.0.1:{port}"]\n'
        '[metrics]\nmode = "advanced"\n'
        "[packetparser]\ncontainer_interfaces = true\n"
        "[dropreason]\nenabled = true\n"
        '[resolvers]\norder = ["docker", "host"]\n'
    )
    config.chmod(0o644)
    try:
        a = things.run(unique("rt-img-a"))
        b = things.run(unique("rt-img-b"))
        c = run_retinad(things, retinad_image, config, port)
        d = Daemon(things, c, port)

        def ready() -> bool:
            state = things.api.inspect_container(c.id)["State"]
            if not state["Running"]:
                raise AssertionError(f"retinad's container exited:\n{d.logs()}")
            return serving(port) and (
                value(d.scrape(), "retinad_resolver_up", {"resolver": "docker"}) == 1
            )

        wait_for(ready, timeout=180, what="retinad in its container serving, docker resolver up")
        yield d, a, b
        things.api.stop(c.id, timeout=20)
        state = things.api.inspect_container(c.id)["State"]
        assert state["ExitCode"] == 0, d.logs()
    finally:
        things.close()


@pytest.mark.timeout(1200)  # the first user of the image builds it (minutes when cold)
def test_image_counts_traffic_between_two_containers_by_name(
    daemon: tuple[Daemon, Container, Container],
) -> None:
    d, a, b = daemon

    def deltas(before: Samples) -> dict[tuple[str, str, str], float]:
        now = d.scrape()
        out = {}
        for who, c in (("a", a), ("b", b)):
            for direction in ("ingress", "egress"):
                for metric in (PKTS, BYTES):
                    lab = ep(c, direction)
                    out[(metric, who, direction)] = value(now, metric, lab) - value(
                        before, metric, lab
                    )
        return out

    # Both veths are attached and named before the exact count starts.
    def attached() -> bool:
        send_udp(a, str(b.ip()), 1, 1)
        send_udp(b, str(a.ip()), 1, 1)
        now = d.scrape()
        return value(now, PKTS, ep(a, "egress")) > 0 and value(now, PKTS, ep(b, "egress")) > 0

    wait_for(attached, timeout=30, what="both containers' veths counted under their names")
    before = d.scrape()
    send_udp(a, str(b.ip()), 9, 100)
    send_udp(b, str(a.ip()), 4, 300)
    want = {
        (PKTS, "a", "egress"): 9,
        (BYTES, "a", "egress"): 9 * (UDP4 + 100),
        (PKTS, "b", "ingress"): 9,
        (BYTES, "b", "ingress"): 9 * (UDP4 + 100),
        (PKTS, "b", "egress"): 4,
        (BYTES, "b", "egress"): 4 * (UDP4 + 300),
        (PKTS, "a", "ingress"): 4,
        (BYTES, "a", "ingress"): 4 * (UDP4 + 300),
    }
    try:
        wait_for(lambda: deltas(before) == want, what="exact per-container counts")
    except AssertionError:
        raise AssertionError(f"want {want}, got {deltas(before)}") from None
    logs = d.logs()
    assert "Traceback" not in logs, logs

    # The DaemonSet's memory limit holds the measured peak (bcc's compile at start-up).
    status = Path(f"/proc/{d.container.pid}/status").read_text()
    kib = {
        k: int(v.split()[0])
        for k, v in (ln.split(":", 1) for ln in status.splitlines())
        if k in ("VmRSS", "VmHWM")
    }
    print(
        f"retinad in its container: VmRSS {kib['VmRSS'] >> 10} MiB, VmHWM {kib['VmHWM'] >> 10} MiB"
    )
    assert kib["VmHWM"] * 1024 < memory_limit_bytes(), kib


def memory_limit_bytes() -> int:
    """The DaemonSet's ``resources.limits.memory`` (Mi units, as the manifest writes it)."""
    import yaml

    with (REPO_ROOT / "deploy" / "kubernetes" / "daemonset.yaml").open() as f:
        ds = yaml.safe_load(f)
    limit = ds["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"]
    assert limit.endswith("Mi"), limit
    return int(limit[:-2]) * 1024 * 1024


def in_image(image: str, entrypoint: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "docker",
            "run",
            "--rm",
            "--label",
            f"{LABEL}=1",
            "--network",
            "none",
            "--entrypoint",
            entrypoint,
            image,
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.timeout(1200)  # the first user of the image builds it (minutes when cold)
def test_image_is_the_deb_installed_and_nothing_else(retinad_image: str) -> None:
    """The image ships the deb's files (scripts/build-image.sh installs the deb that
    packaging/build.sh makes): dpkg knows the package, every file it installed is intact,
    and retinad's directories hold nothing the package did not install (but the .pyc its
    postinst compiles, as on a host)."""
    from retinad import __version__

    status = in_image(retinad_image, "dpkg-query", "-W", "-f", "${Version} ${Status}", "retinad")
    assert status.returncode == 0, status.stderr
    assert status.stdout == f"{__version__}-1 install ok installed", status.stdout
    verify = in_image(retinad_image, "dpkg", "--verify", "retinad")
    assert (verify.returncode, verify.stdout) == (0, ""), verify.stdout + verify.stderr
    dirs = ["/usr/lib/retinad", "/usr/share/retinad"]
    listed = in_image(retinad_image, "dpkg-query", "-L", "retinad").stdout.splitlines()
    found = in_image(
        retinad_image, "find", *dirs, "-type", "f", "!", "-name", "*.pyc"
    ).stdout.splitlines()
    owned = {p for p in listed if p.startswith(tuple(d + "/" for d in dirs))}
    assert found, "no files under /usr/lib/retinad"
    assert set(found) <= owned, sorted(set(found) - owned)
    entry = in_image(retinad_image, "/usr/bin/retinad", "--version")
    assert entry.returncode == 0 and __version__ in entry.stdout + entry.stderr, entry
