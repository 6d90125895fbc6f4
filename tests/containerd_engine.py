"""A private containerd for tests, and containers in it that need no registry.

``ContainerdEngine`` runs Debian's ``/usr/bin/containerd`` with its own root, state and
sockets in a temporary directory (the CRI plugin and the snapshotters that cannot work here
are disabled, so it is ready in ~50 ms) and drives it with ``ctr``. It never touches another
containerd (a system one, or dockerd's under /run/docker/containerd).

Images: ``import_image`` assembles a docker-archive tarball in Python (one layer: a static
busybox with relative links for the few applets the tests run, a config, a manifest) and
``ctr images import``s it, so a container has a real image reference. ``rootfs`` is the same
tree as a plain directory for ``ctr run --rootfs``, which needs no image at all.

Containers join a network namespace the test made (tests/netns.py) with
``ctr run --with-ns network:/run/netns/<name>``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import shutil
import signal
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from tests.daemon_proc import wait_for

CONTAINERD = "/usr/bin/containerd"
CTR = "/usr/bin/ctr"
BUSYBOX = "/bin/busybox"
APPLETS = ("sh", "sleep", "true")
IMAGE = "retinad.test/busybox:1"
"""The reference ``import_image`` gives the image."""

CONFIG = """\
version = 2
root = "{root}"
state = "{state}"
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.aufs",
]

[grpc]
  address = "{sock}"

[ttrpc]
  address = "{sock}.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
"""


class ContainerdEngine:
    """A containerd process of our own (start, stop, restart) plus ``ctr`` helpers."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.sock = workdir / "containerd.sock"
        self.config = workdir / "config.toml"
        self.log_path = workdir / "containerd.log"
        self.rootfs = workdir / "rootfs"
        self.config.write_text(
            CONFIG.format(
                root=workdir / "root", state=workdir / "state", sock=self.sock, opt=workdir / "opt"
            )
        )
        _busybox_tree(self.rootfs)
        self.proc: subprocess.Popen[bytes] | None = None

    # --- the daemon -------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> None:
        assert self.proc is None, "containerd already running"
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [CONTAINERD, "--config", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        wait_for(self._ready, timeout=timeout, what="containerd to answer on its socket")

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"containerd exited {self.proc.returncode}:\n{self.log()}")
        return self.sock.exists() and self.ctr("version", check=False).returncode == 0

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM containerd and wait. Its shims (the running tasks) stay, as in a real
        restart: a containerd started again on the same root/state takes them back."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # --- ctr --------------------------------------------------------------------------

    def ctr(
        self, *args: str, namespace: str = "default", check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        cmd = [CTR, "--address", str(self.sock), "--namespace", namespace, *args]
        p = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=60)
        if check and p.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} -> {p.returncode}: {p.stderr.strip()}")
        return p

    def import_image(self, namespace: str) -> str:
        """Import the busybox image into ``namespace``; return its reference."""
        tar = self.dir / "busybox-image.tar"
        if not tar.exists():
            tar.write_bytes(_docker_archive(self.rootfs, IMAGE))
        self.ctr("images", "import", str(tar), namespace=namespace)
        return IMAGE

    def run(
        self,
        namespace: str,
        cid: str,
        *,
        netns: str | None = None,
        image: str | None = None,
        labels: Mapping[str, str] | None = None,
        cmd: Sequence[str] = ("/bin/sleep", "600"),
    ) -> int:
        """``ctr run -d`` a container: from ``image``, else from the ``rootfs`` directory;
        in the named network namespace ``netns`` (/run/netns/<netns>), else the host's.
        Returns the task's PID."""
        # runc's state in our dir too, not /run/containerd/runc/<namespace>
        args = ["run", "--detach", "--null-io", "--runc-root", str(self.dir / "runc")]
        if netns is not None:
            args += ["--with-ns", f"network:/run/netns/{netns}"]
        else:
            args.append("--net-host")
        for k, v in (labels or {}).items():
            args += ["--label", f"{k}={v}"]
        if image is None:
            args += ["--rootfs", str(self.rootfs)]
        else:
            args.append(image)
        self.ctr(*args, cid, *cmd, namespace=namespace)
        return self.task_pid(namespace, cid)

    def task_pid(self, namespace: str, cid: str) -> int:
        out = self.ctr("tasks", "list", namespace=namespace).stdout
        for line in out.splitlines()[1:]:
            fields = line.split()
            if fields and fields[0] == cid:
                return int(fields[1])
        raise AssertionError(f"no task {cid} in {namespace}: {out}")

    def kill(self, namespace: str, cid: str) -> None:
        """SIGKILL the task and wait until containerd has seen it stop."""
        self.ctr("tasks", "kill", "--signal", "SIGKILL", cid, namespace=namespace)
        wait_for(
            lambda: self._status(namespace, cid) in ("STOPPED", None),
            timeout=10,
            what=f"task {cid} to stop",
        )

    def _status(self, namespace: str, cid: str) -> str | None:
        for line in self.ctr("tasks", "list", namespace=namespace).stdout.splitlines()[1:]:
            fields = line.split()
            if fields and fields[0] == cid:
                return fields[2]
        return None

    def remove(self, namespace: str, cid: str) -> None:
        """Kill and delete the task (if any), then delete the container (if any)."""
        self.ctr("tasks", "delete", "--force", cid, namespace=namespace, check=False)
        self.ctr("containers", "delete", cid, namespace=namespace, check=False)

    def remove_all(self) -> None:
        """Every container in every namespace: what the tests made."""
        for ns in self.ctr("namespaces", "list", "--quiet").stdout.split():
            for cid in self.ctr("containers", "list", "--quiet", namespace=ns).stdout.split():
                self.remove(ns, cid)

    def close(self) -> None:
        try:
            if self.proc is None:
                self.start()  # to delete the tasks its shims still run
            self.remove_all()
        finally:
            self.stop()
            _unmount_under(self.dir)
            shutil.rmtree(self.dir, ignore_errors=True)


@contextmanager
def containerd_engine(*, started: bool = True) -> Iterator[ContainerdEngine]:
    """A ContainerdEngine in a fresh temp dir, cleaned up (tasks, containers, files)."""
    engine = ContainerdEngine(Path(tempfile.mkdtemp(prefix="retinad-ctrd-")))
    try:
        if started:
            engine.start()
        yield engine
    finally:
        engine.close()


# --- images without a registry ----------------------------------------------------------


def _busybox_tree(root: Path) -> None:
    """root/bin/busybox (static) with relative links for APPLETS, and the dirs runc needs."""
    (root / "bin").mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    for applet in APPLETS:
        (root / "bin" / applet).symlink_to("busybox")
    for d in ("proc", "sys", "dev", "etc", "tmp"):
        (root / d).mkdir(exist_ok=True)


def _goarch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def _layer(root: Path) -> bytes:
    """The tree as an uncompressed layer tarball, reproducible (fixed owners and times)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(root.rglob("*")):
            info = tar.gettarinfo(str(path), arcname=str(path.relative_to(root)))
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mtime = 0
            if info.isfile():
                with path.open("rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
    return buf.getvalue()


def _docker_archive(root: Path, reference: str) -> bytes:
    """A ``docker save``-format tarball: manifest.json, the config, one layer."""
    layer = _layer(root)
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    config = json.dumps(
        {
            "architecture": _goarch(),
            "os": "linux",
            "config": {"Cmd": ["/bin/sleep", "600"], "Env": ["PATH=/bin"]},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "history": [{"created_by": "tests/containerd_engine.py"}],
        },
        sort_keys=True,
    ).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    layer_name = diff_id.removeprefix("sha256:") + "/layer.tar"
    manifest = json.dumps(
        [{"Config": config_name, "RepoTags": [reference], "Layers": [layer_name]}]
    ).encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in (
            ("manifest.json", manifest),
            (config_name, config),
            (layer_name, layer),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _unmount_under(path: Path) -> None:
    """Lazily unmount anything still mounted below ``path`` (a rootfs left by a crash)."""
    prefix = str(path.resolve()) + "/"
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    for point in sorted((p for p in points if p.startswith(prefix)), reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)


def pid_netns_inode(pid: int) -> int:
    return os.stat(f"/proc/{pid}/ns/net").st_ino
