"""A real Docker engine for tests: the one already running, or a dockerd the tests start.

If ``/var/run/docker.sock`` answers, the tests use that engine and never stop it. Otherwise
``DockerEngine.shared()`` starts ``dockerd --live-restore`` (default data-root and socket,
default bridge; never ``--bridge=none``, which deletes the host's docker0) with its log in
$TMPDIR/retinad-test-dockerd.log, and stops it, and only it, at the end of the session.
``--live-restore`` keeps containers running while dockerd is down, which the restart tests
need: they stop and start the engine under running containers.

Everything tests create carries the label ``retinad-test=1`` and is removed by
``Things.close()`` even when a test fails; the session teardown removes anything labelled
that is left. The image is busybox-static imported as a rootfs (``docker import``): no
registry is reachable here, and a static busybox needs nothing else.

Containers run busybox ``sleep`` as PID 1 and send nothing by themselves (no DHCP, no
DNS), so the only TCP/UDP packets on their veths are the ones a test sends.
"""

from __future__ import annotations

import io
import ipaddress
import secrets
import signal
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
import docker.types
import pytest

from retinad.resolvers.base import IPAddress
from retinad.resolvers.docker import probe
from tests.daemon_proc import wait_for

SOCKET = Path("/var/run/docker.sock")
HOST = f"unix://{SOCKET}"
IMAGE = "retinad-test/busybox:latest"
LABEL = "retinad-test"
BUSYBOX = "/bin/busybox"


def _client(host: str = HOST, timeout: float = 30.0) -> Any:
    return docker.APIClient(base_url=host, version="auto", timeout=timeout)


def answers(host: str = HOST) -> bool:
    """True if a Docker engine answers /_ping at ``host`` right now."""
    try:
        probe(host, 2.0)  # the SDK would leak the socket of a failed connect
        client = _client(host, timeout=2.0)
    except (OSError, docker.errors.DockerException):
        return False
    try:
        return bool(client.ping())
    except Exception:
        return False
    finally:
        client.close()


class DockerEngine:
    """The engine the tests talk to; ``owned`` if this session started it."""

    _shared: DockerEngine | None = None

    def __init__(self) -> None:
        self.host = HOST
        self.proc: subprocess.Popen[bytes] | None = None
        self.owned = False
        self.log_path = Path(tempfile.gettempdir()) / "retinad-test-dockerd.log"
        """One file, rewritten by each session that starts dockerd (kept for diagnosis)."""
        self._api: Any = None

    @classmethod
    def shared(cls) -> DockerEngine:
        """One engine per test session, started on first use."""
        if cls._shared is None:
            engine = cls()
            if answers():
                print(f"docker_engine: using the running engine at {HOST}", file=sys.stderr)
            else:
                engine.owned = True
                engine.log_path.write_bytes(b"")
                engine.start()
            cls._shared = engine
        return cls._shared

    # --- lifecycle of a dockerd we own --------------------------------------------------

    def start(self, timeout: float = 30.0) -> None:
        assert self.owned, "start() only runs a dockerd this session owns"
        assert self.proc is None or self.proc.poll() is not None, "dockerd already running"
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                ["dockerd", "--live-restore"],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # a ^C to pytest must not kill it mid-test
            )
        try:
            wait_for(self._started, timeout=timeout, what="dockerd to answer /_ping")
        except AssertionError:
            raise AssertionError(f"dockerd did not start; log:\n{self.log_tail()}") from None

    def _started(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"dockerd exited {self.proc.returncode}:\n{self.log_tail()}")
        return answers()

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM our dockerd and wait until it has exited (containers keep running)."""
        assert self.owned, "stop() only stops a dockerd this session started"
        self._drop_api()
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"dockerd ignored SIGTERM; log:\n{self.log_tail()}") from None

    def restart(self) -> None:
        self.stop()
        self.start()

    def require_owned(self) -> None:
        if not self.owned:
            pytest.skip(
                "this test stops and starts dockerd; the engine at "
                f"{HOST} was already running, so it is not ours to stop"
            )

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # --- API ----------------------------------------------------------------------------

    @property
    def api(self) -> Any:
        """A low-level client (reconnected after a restart)."""
        if self._api is None:
            self._api = _client(self.host)
        return self._api

    def _drop_api(self) -> None:
        if self._api is not None:
            self._api.close()
            self._api = None

    def image(self) -> str:
        """The busybox image, imported once per machine (reused when the tag exists)."""
        try:
            self.api.inspect_image(IMAGE)
        except docker.errors.ImageNotFound:
            repo, tag = IMAGE.rsplit(":", 1)
            self.api.import_image_from_data(
                busybox_rootfs_tar(), repository=repo, tag=tag, changes=['CMD ["/bin/sh"]']
            )
        return IMAGE

    def remove_leftovers(self) -> None:
        """Remove every container and network a test labelled and did not remove."""
        api = self.api
        for c in api.containers(all=True, filters={"label": LABEL}):
            with suppress(docker.errors.NotFound):
                api.remove_container(c["Id"], force=True)
        for n in api.networks(filters={"label": LABEL}):
            with suppress(docker.errors.NotFound):
                api.remove_network(n["Id"])

    def close(self) -> None:
        """Session end: remove leftovers; stop dockerd if this session started it."""
        if DockerEngine._shared is not self:
            return
        DockerEngine._shared = None
        try:
            if answers():
                self.remove_leftovers()
        finally:
            self._drop_api()
            if self.owned:
                self.stop()


def busybox_rootfs_tar() -> bytes:
    """A rootfs with /bin/busybox (static) and one symlink per applet, as a tar."""
    applets = subprocess.run(
        [BUSYBOX, "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for d, mode in (("bin", 0o755), ("etc", 0o755), ("tmp", 0o1777), ("proc", 0o555),
                        ("sys", 0o555), ("dev", 0o755)):  # fmt: skip
            info = tarfile.TarInfo(d)
            info.type = tarfile.DIRTYPE
            info.mode = mode
            tar.addfile(info)
        tar.add(BUSYBOX, arcname="bin/busybox")
        for applet in applets:
            if applet == "busybox":
                continue
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type = tarfile.SYMTYPE
            link.linkname = "busybox"
            tar.addfile(link)
    return buf.getvalue()


# --- what tests create ---------------------------------------------------------------------


@dataclass
class Container:
    id: str
    name: str
    info: dict[str, Any]

    @property
    def pid(self) -> int:
        return int(self.info["State"]["Pid"])

    def ip(self, network: str = "bridge") -> IPAddress:
        return ipaddress.ip_address(self.info["NetworkSettings"]["Networks"][network]["IPAddress"])

    def ip6(self, network: str) -> IPAddress:
        net = self.info["NetworkSettings"]["Networks"][network]
        return ipaddress.ip_address(net["GlobalIPv6Address"])


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


class Things:
    """Containers and networks one test makes; ``close`` removes them all."""

    def __init__(self, engine: DockerEngine) -> None:
        self.engine = engine
        self.containers: list[str] = []
        self.networks: list[str] = []

    @property
    def api(self) -> Any:
        return self.engine.api

    def run(
        self,
        name: str,
        *,
        labels: dict[str, str] | None = None,
        network_mode: str | None = None,
        command: Sequence[str] = ("sleep", "3600"),
    ) -> Container:
        """Create and start a busybox container; return it as inspected once running."""
        host_config = self.api.create_host_config(network_mode=network_mode)
        created = self.api.create_container(
            self.engine.image(),
            command=list(command),
            name=name,
            labels={LABEL: "1", **(labels or {})},
            host_config=host_config,
            stop_signal="SIGKILL",
        )
        self.containers.append(created["Id"])
        self.api.start(created["Id"])
        return self.inspect(created["Id"])

    def inspect(self, cid: str) -> Container:
        info = self.api.inspect_container(cid)
        return Container(id=info["Id"], name=info["Name"].lstrip("/"), info=info)

    def network(self, name: str, *, subnet6: str | None = None) -> str:
        """A user-defined bridge network (IPv6 too when ``subnet6`` is given)."""
        ipam = None
        if subnet6 is not None:
            ipam = docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet=subnet6)])
        net = self.api.create_network(
            name, driver="bridge", enable_ipv6=subnet6 is not None, ipam=ipam, labels={LABEL: "1"}
        )
        self.networks.append(net["Id"])
        return name

    def connect(self, container: Container, network: str) -> Container:
        self.api.connect_container_to_network(container.id, network)
        return self.inspect(container.id)

    def disconnect(self, container: Container, network: str) -> Container:
        self.api.disconnect_container_from_network(container.id, network)
        return self.inspect(container.id)

    def remove(self, container: Container) -> None:
        self.api.remove_container(container.id, force=True)

    def exec(self, container: Container, *cmd: str) -> str:
        """Run ``cmd`` in the container; its stdout (fails on a non-zero exit)."""
        ex = self.api.exec_create(container.id, list(cmd), stdout=True, stderr=True)
        out = self.api.exec_start(ex["Id"])
        rc = self.api.exec_inspect(ex["Id"])["ExitCode"]
        text = bytes(out).decode(errors="replace")
        if rc != 0:
            raise AssertionError(f"{cmd} in {container.name} -> {rc}: {text}")
        return text

    def host_veths(self, container: Container) -> dict[str, tuple[int, int]]:
        """Interface in the container -> (its ifindex there, the ifindex of its host-side
        peer), as the container's own sysfs tells it (iflink), independently of the
        resolver."""
        out = self.exec(
            container,
            "sh",
            "-c",
            "for d in /sys/class/net/*; do echo ${d##*/} $(cat $d/ifindex) $(cat $d/iflink); done",
        )
        veths: dict[str, tuple[int, int]] = {}
        for line in out.splitlines():
            name, ifindex, iflink = line.split()
            if iflink != ifindex:  # lo (and any non-paired link) is its own link
                veths[name] = (int(ifindex), int(iflink))
        return veths

    def close(self) -> None:
        if self.engine.owned and not answers():
            self.engine.start()  # a test failed while dockerd was down
        errors: list[str] = []
        for cid in reversed(self.containers):
            try:
                self.api.remove_container(cid, force=True)
            except docker.errors.NotFound:
                pass
            except Exception as err:  # keep removing the rest
                errors.append(f"container {cid[:12]}: {err}")
        for nid in reversed(self.networks):
            try:
                self.api.remove_network(nid)
            except docker.errors.NotFound:
                pass
            except Exception as err:
                errors.append(f"network {nid[:12]}: {err}")
        assert not errors, errors


def host_link_names() -> dict[int, str]:
    """ifindex -> "name@peer" lines of ``ip -o link`` in the host namespace."""
    out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True)
    links: dict[int, str] = {}
    for line in out.stdout.splitlines():
        idx, name = line.split(": ")[:2]
        links[int(idx)] = name
    return links


@contextmanager
def engine_session() -> Iterator[DockerEngine]:
    """For a session-scoped fixture: the shared engine with the image imported; at the end
    leftovers are removed and a dockerd this session started is stopped (idempotent, so
    several test modules may each wrap the same engine)."""
    engine = DockerEngine.shared()
    engine.image()
    try:
        yield engine
    finally:
        engine.close()


@contextmanager
def made_by_test(engine: DockerEngine) -> Iterator[Things]:
    """For a function-scoped fixture: what the test creates, removed even if it fails."""
    t = Things(engine)
    try:
        yield t
    finally:
        t.close()
