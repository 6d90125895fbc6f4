"""A real systemd as PID 1 for the package tests: a Docker container, or systemd-nspawn.

Docker (research/env-e2e.md gotcha A): no --privileged here, so every capability but
CAP_SYS_RESOURCE, seccomp and AppArmor unconfined, the host's cgroup tree, tmpfs /run.
Docker 20.10 knows no CAP_BPF/CAP_PERFMON (gotcha B): inside it only CAP_SYS_ADMIN lets
bcc work, so the least-privilege unit is proven in nspawn instead (NspawnMachine).

nspawn, with no systemd on the host (gotcha I): --register=no --keep-unit, bpf and
perf_event_open allowed through its seccomp filter, and afterwards the cgroups and
/run/systemd/nspawn it leaves behind are removed (only those this machine made).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

from tests.daemon_proc import wait_for

LABEL = "retinad-test-package=1"
"""Not the suite's retinad-test label: other sessions' teardowns remove those."""


def run(cmd: Sequence[str], *, check: bool = True, timeout: float = 300, **kw: object) -> str:
    """Run a host command; on failure the assertion shows its output."""
    proc = subprocess.run(
        list(cmd), capture_output=True, text=True, timeout=timeout, check=False, **kw
    )  # type: ignore[call-overload]
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} -> rc {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        )
    return str(proc.stdout)


class Box:
    """What the tests do inside a booted systemd, whatever runs it."""

    def exec_argv(self, argv: Sequence[str]) -> list[str]:
        raise NotImplementedError

    def sh(self, script: str, *, check: bool = True, timeout: float = 300) -> str:
        return run(self.exec_argv(["sh", "-c", script]), check=check, timeout=timeout)

    def rc(self, script: str) -> int:
        argv = self.exec_argv(["sh", "-c", script])
        return subprocess.run(argv, capture_output=True, timeout=120, check=False).returncode

    def put(self, data: bytes, path: str) -> None:
        """Write a file (not `docker cp`: it is invisible under tmpfs mounts, gotcha E)."""
        argv = self.exec_argv(["sh", "-c", f"cat > {path}"])
        subprocess.run(argv, input=data, check=True, timeout=120)

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.sh(f"systemctl show {unit} " + " ".join(f"-p {p}" for p in props))
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def wait_booted(self, timeout: float = 60) -> None:
        wait_for(
            lambda: self.rc("systemctl is-system-running | grep -qE '^(running|degraded)$'") == 0,
            timeout=timeout,
            what="systemd to finish booting",
        )

    def wait_active(self, unit: str, *, timeout: float = 240, not_pid: str = "") -> str:
        """Wait until ``unit`` is active (after READY=1) with a main PID other than not_pid."""

        def ready() -> str | None:
            s = self.show(unit, "ActiveState", "MainPID")
            pid = s.get("MainPID", "0")
            if s.get("ActiveState") == "active" and pid not in ("0", not_pid):
                return pid
            return None

        return wait_for(ready, timeout=timeout, what=f"{unit} active")


class SystemdContainer(Box):
    """systemd as PID 1 in a Docker container from the bcc image."""

    def __init__(self, image: str, name: str) -> None:
        self.name = name
        run(["docker", "rm", "-f", name], check=False)
        run(
            [
                "docker", "run", "-d", "--name", name, "--hostname", name, "--label", LABEL,
                "--cap-add", "ALL", "--cap-drop", "SYS_RESOURCE",
                "--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined",
                "--security-opt", "systempaths=unconfined",
                "--cgroupns=host", "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw",
                "--tmpfs", "/run", "--tmpfs", "/run/lock", "--tmpfs", "/tmp",
                "--stop-signal", "SIGRTMIN+3",
                # bcc compiles against the host's kernel headers (scripts/setup.sh links them)
                "-v", "/lib/modules:/lib/modules:ro", "-v", "/usr/src:/usr/src:ro",
                image,
            ]
        )  # fmt: skip
        self.ip = run(["docker", "inspect", "-f", "{{.NetworkSettings.IPAddress}}", name]).strip()
        self.pid = int(run(["docker", "inspect", "-f", "{{.State.Pid}}", name]).strip())

    def exec_argv(self, argv: Sequence[str]) -> list[str]:
        return ["docker", "exec", "-i", self.name, *argv]

    def remove(self) -> None:
        run(["docker", "stop", "-t", "10", self.name], check=False)
        run(["docker", "rm", "-f", self.name], check=False)


class NspawnMachine(Box):
    """systemd as PID 1 under systemd-nspawn: real capability sets, CAP_BPF included."""

    def __init__(self, rootfs: Path, name: str, capabilities: str) -> None:
        self.name = name
        self._cgroups_before = _nspawn_cgroups()
        self._had_nspawn_run = Path("/run/systemd/nspawn").exists()
        # --volatile=overlay: the cached tree stays untouched, writes go to a tmpfs.
        self.proc = subprocess.Popen(
            [
                "systemd-nspawn", "-q", "-b", "-D", str(rootfs), "--volatile=overlay",
                "--register=no", "--keep-unit", "--private-network", "--network-veth",
                "--console=passive",
                "-M", name, f"--capability={capabilities}",
                "--system-call-filter=bpf perf_event_open",
                "--bind-ro=/lib/modules", "--bind-ro=/usr/src",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )  # fmt: skip
        self.leader = wait_for(self._leader, timeout=60, what="nspawn's init")

    def _leader(self) -> int | None:
        if self.proc.poll() is not None:
            err = self.proc.stderr.read().decode() if self.proc.stderr else ""
            raise AssertionError(f"systemd-nspawn exited {self.proc.returncode}: {err}")
        # nspawn's first child is a short-lived helper; the machine's init is the child
        # that became systemd.
        out = run(["ps", "-o", "pid=,comm=", "--ppid", str(self.proc.pid)], check=False)
        for line in out.splitlines():
            pid, _, comm = line.strip().partition(" ")
            if comm.strip() == "systemd":
                return int(pid)
        return None

    def exec_argv(self, argv: Sequence[str]) -> list[str]:
        return ["nsenter", "-t", str(self.leader), "-a", *argv]

    def remove(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # nspawn halts the machine cleanly
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        if self.proc.stderr:
            self.proc.stderr.close()
        # gotcha I: empty payload/supervisor cgroups and /run/systemd/nspawn stay behind.
        for cg in sorted(_nspawn_cgroups() - self._cgroups_before, key=len, reverse=True):
            with contextlib.suppress(OSError):
                Path(cg).rmdir()
        if not self._had_nspawn_run:
            shutil.rmtree("/run/systemd/nspawn", ignore_errors=True)


def _nspawn_cgroups() -> set[str]:
    found: set[str] = set()
    for top in ("/sys/fs/cgroup/systemd", "/sys/fs/cgroup/unified", "/sys/fs/cgroup"):
        for leaf in ("payload", "supervisor"):
            p = Path(top) / leaf
            if p.is_dir():
                found.add(str(p))
                found.update(str(d) for d in p.rglob("*") if d.is_dir())
    return found


@contextlib.contextmanager
def container(image: str, name: str) -> Iterator[SystemdContainer]:
    box = SystemdContainer(image, name)
    try:
        box.wait_booted()
        yield box
    finally:
        box.remove()


def wait_http(url: str, *, timeout: float = 60) -> str:
    import urllib.error
    import urllib.request

    def get() -> str | None:
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                return str(resp.read().decode())
        except (urllib.error.URLError, OSError):
            return None

    return wait_for(get, timeout=timeout, what=f"GET {url}")
