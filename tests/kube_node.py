"""A real one-node Kubernetes for tests: a kubelet with a private containerd, beside
KubeCluster's etcd + kube-apiserver, and a kube-controller-manager (DaemonSet,
Deployment, ReplicaSet, Endpoints and service-account controllers).

Why real: the DaemonSet's manifest is only proven when a kubelet runs it (its
capabilities under containerd, its hostPath and ConfigMap volumes, its probes), and the
ServiceMonitor's scrape path only when the Endpoints controller fills the headless
Service. What worked here and the traps it took: ../shared/research/kube-node.md.

The parts, each private to one KubeNode (own names, dirs, sockets, free ports):

* node address: a port-less bridge carrying one /32 (the kubelet refuses a loopback
  node IP and this kernel has no dummy links); kubelet, probes and retinad use it;
* containerd with its CRI plugin: own socket, root and state, overlayfs, runc v2 with
  cgroupfs, ``restrict_oom_score_adj`` (this machine lacks CAP_SYS_RESOURCE);
* CNI: Debian's ``bridge`` (own bridge, host-local IPAM with its own data dir) and
  ``firewall`` (Docker's FORWARD policy is DROP);
* images without a registry: a static C pause program ``FROM scratch`` and retinad's
  image, ``docker save`` | ``ctr import``; pods use ``imagePullPolicy: Never``;
* no kube-scheduler: :meth:`KubeNode.bind_pending` binds pending pods to the node
  through the ``pods/binding`` subresource, the one call the scheduler would make;
* no kube-proxy: ClusterIPs do not route, so a pod that talks to the API server is
  hostNetwork and is given ``KUBERNETES_SERVICE_HOST=127.0.0.1`` (the apiserver's
  address on the node) by the test.

The kubelet is scripts/build-kubelet.sh's (same source as the apiserver, patched only to
leave the host's sysctls alone) and runs with ``--make-iptables-util-chains=false``.
Stop order (:meth:`KubeNode.stop`): the controller-manager, then every pod (CNI DEL
removes veths, addresses and firewall rules), then the kubelet and containerd; then
the bridges, the CNI chains if nothing else uses them, and the kubepods cgroups.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from tests.daemon_proc import wait_for
from tests.kube_cluster import KubeCluster, _Proc, cache_dir, free_port

KUBELET_BUILD = Path(__file__).resolve().parent.parent / "scripts" / "build-kubelet.sh"
CNI_BIN_DIR = Path("/usr/lib/cni")
CTR_NAMESPACE = "k8s.io"

PAUSE_C = r"""
#include <signal.h>
#include <unistd.h>
static void bye(int s) { (void)s; _exit(0); }
int main(void) {
    signal(SIGTERM, bye);
    signal(SIGINT, bye);
    for (;;) pause();
}
"""


def kubelet_binary_path() -> Path:
    return cache_dir() / "kube" / "v1.20.2" / "kubelet"


def controller_manager_binary_path() -> Path:
    return cache_dir() / "kube" / "v1.20.2" / "kube-controller-manager"


def ensure_node_built(timeout: float = 3600.0) -> Path:
    """Run scripts/build-kubelet.sh (instant once built); returns the kubelet's path."""
    proc = subprocess.run(
        ["bash", str(KUBELET_BUILD)], capture_output=True, text=True, timeout=timeout, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{KUBELET_BUILD} failed:\n{proc.stderr[-4000:]}")
    return Path(proc.stdout.strip().splitlines()[-1])


def _run(*argv: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check, timeout=timeout)


class KubeNode:
    """A kubelet node named ``name`` registered with ``cluster``; a context manager."""

    def __init__(
        self,
        cluster: KubeCluster,
        workdir: Path,
        *,
        images: list[str],
        name: str | None = None,
        node_ip: str = "10.233.77.1",
        pod_subnet: str = "10.233.78.0/24",
    ) -> None:
        self.cluster = cluster
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        tag = secrets.token_hex(3)
        self.name = name or f"rtkn-{tag}"
        self.node_ip = node_ip
        self.pod_subnet = pod_subnet
        self.images = list(images)
        # Interface names: 15 characters at most.
        self.node_bridge = f"rtkn{tag}n"
        self.cni_bridge = f"rtkn{tag}c"
        self.pause_image = f"docker.io/retinad-test/pause:{tag}"
        self.run_dir = Path(f"/run/rtkn-{tag}")
        self.sock = self.run_dir / "containerd.sock"
        self.kubelet_port = free_port()
        self.kubelet_healthz_port = free_port()
        self._containerd: _Proc | None = None
        self._kubelet: _Proc | None = None
        self._kcm: _Proc | None = None
        self._links: list[str] = []

    # -- lifecycle ---------------------------------------------------------

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        self._node_address()
        self._start_containerd()
        self._import_images()
        self._write_cni_config()
        self._start_kubelet()
        self._start_controller_manager()
        wait_for(self._node_ready, timeout=120, what=f"Node {self.name} Ready")

    def stop(self) -> None:
        if self._kcm is not None:
            self._kcm.stop()
            self._kcm = None
        if self._kubelet is not None and self._kubelet.alive():
            with contextlib.suppress(Exception):
                self._delete_all_pods()
        if self._kubelet is not None:
            self._kubelet.stop(timeout=20)
            self._kubelet = None
        if self._containerd is not None:
            self._stop_leftover_tasks()
            self._containerd.stop(timeout=20)
            self._containerd = None
        for link in self._links:
            _run("ip", "link", "del", link, check=False)
        self._links.clear()
        self._remove_cni_chains()
        self._remove_cgroups()
        if self.run_dir.exists():
            shutil.rmtree(self.run_dir, ignore_errors=True)
        if os.environ.get("RETINAD_KEEP_KUBE_DATA") != "1":
            for sub in ("containerd-root", "kubelet"):
                _run("umount", "-R", "-l", str(self.workdir / sub), check=False)
                shutil.rmtree(self.workdir / sub, ignore_errors=True)

    # -- parts -------------------------------------------------------------

    def _node_address(self) -> None:
        _run("ip", "link", "add", self.node_bridge, "type", "bridge")
        self._links.append(self.node_bridge)
        _run("ip", "addr", "add", f"{self.node_ip}/32", "dev", self.node_bridge)
        _run("ip", "link", "set", self.node_bridge, "up")
        # The CNI bridge is made by the bridge plugin; deleted on stop like ours.
        self._links.append(self.cni_bridge)

    def _start_containerd(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        root = self.workdir / "containerd-root"
        self.cni_conf_dir = self.workdir / "cni-conf"
        self.cni_conf_dir.mkdir(exist_ok=True)
        config = self.workdir / "containerd.toml"
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        config.write_text(
            textwrap.dedent(
                f"""\
                version = 2
                root = "{root}"
                state = "{self.run_dir / "state"}"
                [grpc]
                  address = "{self.sock}"
                [ttrpc]
                  address = "{self.sock}.ttrpc"
                [debug]
                  level = "warn"
                [plugins."io.containerd.internal.v1.opt"]
                  path = "{root / "opt"}"
                [{cri}]
                  sandbox_image = "{self.pause_image}"
                  restrict_oom_score_adj = true
                  stream_server_address = "127.0.0.1"
                  stream_server_port = "0"
                  [{cri}.containerd]
                    snapshotter = "overlayfs"
                    default_runtime_name = "runc"
                    [{cri}.containerd.runtimes.runc]
                      runtime_type = "io.containerd.runc.v2"
                      [{cri}.containerd.runtimes.runc.options]
                        SystemdCgroup = false
                        Root = "{self.run_dir / "runc"}"
                  [{cri}.cni]
                    bin_dir = "{CNI_BIN_DIR}"
                    conf_dir = "{self.cni_conf_dir}"
                """
            )
        )
        self._containerd = _Proc(
            "containerd",
            ["containerd", "--config", str(config)],
            self.workdir / "containerd.log",
        )

        def up() -> bool:
            if not self._containerd or not self._containerd.alive():
                raise RuntimeError(f"containerd exited:\n{self._containerd_tail()}")
            return self.ctr("version", check=False).returncode == 0

        wait_for(up, timeout=60, what="containerd answering on its socket")

    def _containerd_tail(self) -> str:
        return self._containerd.log_tail() if self._containerd else ""

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run("ctr", "--address", str(self.sock), "-n", CTR_NAMESPACE, *args, check=check)

    def _import_images(self) -> None:
        """The pause image (built here) and ``self.images`` from the suite's dockerd."""
        ctx = self.workdir / "pause-image"
        ctx.mkdir(exist_ok=True)
        (ctx / "pause.c").write_text(PAUSE_C)
        _run("cc", "-static", "-O2", "-o", str(ctx / "pause"), str(ctx / "pause.c"))
        (ctx / "Dockerfile").write_text('FROM scratch\nCOPY pause /pause\nENTRYPOINT ["/pause"]\n')
        short = self.pause_image.removeprefix("docker.io/")
        _run("docker", "build", "-q", "--label", "retinad-test=1", "-t", short, str(ctx))
        try:
            for image in [short, *self.images]:
                with subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE) as save:
                    imp = subprocess.run(
                        [
                            "ctr",
                            "--address",
                            str(self.sock),
                            "-n",
                            CTR_NAMESPACE,
                            "images",
                            "import",
                            "-",
                        ],
                        stdin=save.stdout,
                        capture_output=True,
                        text=True,
                        timeout=600,
                        check=False,
                    )
                if imp.returncode != 0 or save.returncode != 0:
                    raise RuntimeError(f"importing {image} into containerd failed: {imp.stderr}")
        finally:
            _run("docker", "image", "rm", short, check=False)

    def _write_cni_config(self) -> None:
        conflist = {
            "cniVersion": "0.4.0",
            "name": "retinad-test",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": self.cni_bridge,
                    "isGateway": True,
                    "ipMasq": False,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": self.pod_subnet}]],
                        "dataDir": str(self.workdir / "cni-ipam"),
                    },
                },
                {"type": "firewall", "backend": "iptables"},
            ],
        }
        (self.cni_conf_dir / "10-retinad-test.conflist").write_text(json.dumps(conflist))

    def _start_kubelet(self) -> None:
        kubelet = kubelet_binary_path()
        if not os.access(kubelet, os.X_OK):
            kubelet = ensure_node_built()
        kubeconfig = self.cluster.write_kubeconfig(
            self.workdir / "kubelet.kubeconfig", self.cluster.token
        )
        root = self.workdir / "kubelet"
        argv = [
            str(kubelet),
            f"--kubeconfig={kubeconfig}",
            "--container-runtime=remote",
            f"--container-runtime-endpoint=unix://{self.sock}",
            "--cgroup-driver=cgroupfs",
            "--fail-swap-on=false",
            f"--root-dir={root}",
            f"--cert-dir={root / 'pki'}",
            f"--volume-plugin-dir={root / 'volume-plugins'}",
            f"--pod-infra-container-image={self.pause_image}",
            f"--hostname-override={self.name}",
            f"--node-ip={self.node_ip}",
            f"--address={self.node_ip}",
            f"--port={self.kubelet_port}",
            "--read-only-port=0",
            "--healthz-bind-address=127.0.0.1",
            f"--healthz-port={self.kubelet_healthz_port}",
            # No KUBE-MARK-*/KUBE-FIREWALL chains on a shared host.
            "--make-iptables-util-chains=false",
            # Images are imported, never pulled: they must not be garbage-collected.
            "--image-gc-high-threshold=100",
            "--image-gc-low-threshold=99",
            "--node-status-update-frequency=2s",
            "--sync-frequency=5s",
            "--v=1",
        ]
        self._kubelet = _Proc("kubelet", argv, self.workdir / "kubelet.log")

    def _start_controller_manager(self) -> None:
        kcm = controller_manager_binary_path()
        kubeconfig = self.cluster.write_kubeconfig(
            self.workdir / "kcm.kubeconfig", self.cluster.token
        )
        argv = [
            str(kcm),
            f"--kubeconfig={kubeconfig}",
            "--controllers=daemonset,deployment,replicaset,endpoint,serviceaccount,"
            "serviceaccount-token,root-ca-cert-publisher",
            f"--service-account-private-key-file={self.cluster.certs.sa_key}",
            f"--root-ca-file={self.cluster.ca_cert_path}",
            "--leader-elect=false",
            "--port=0",
            "--secure-port=0",
            "--concurrent-endpoint-syncs=1",
            "--v=1",
        ]
        self._kcm = _Proc("kube-controller-manager", argv, self.workdir / "kcm.log")

    def _node_ready(self) -> bool:
        for proc in (self._kubelet, self._kcm, self._containerd):
            if proc is not None and not proc.alive():
                raise RuntimeError(f"{proc.name} exited:\n{proc.log_tail()}")
        from kubernetes.client.rest import ApiException

        with self.cluster.core_v1() as v1:
            try:
                node = v1.read_node(self.name)
            except ApiException as e:
                if e.status == 404:
                    return False
                raise
        return any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])

    # -- what tests use ----------------------------------------------------

    def bind_pending(self, namespace: str) -> list[str]:
        """Bind every unbound pod of ``namespace`` to this node (kube-scheduler's one call)."""
        bound = []
        with self.cluster.core_v1() as v1:
            for pod in v1.list_namespaced_pod(namespace).items:
                if pod.spec.node_name or pod.metadata.deletion_timestamp:
                    continue
                body = {
                    "apiVersion": "v1",
                    "kind": "Binding",
                    "metadata": {"name": pod.metadata.name},
                    "target": {"apiVersion": "v1", "kind": "Node", "name": self.name},
                }
                # The client cannot deserialise a Binding reply (target is required).
                v1.create_namespaced_binding(namespace, body, _preload_content=False)
                bound.append(pod.metadata.name)
        return bound

    def pod_pids(self, pod_uid: str) -> list[int]:
        """PIDs of the processes in pod ``pod_uid``'s containers (its cgroup names the uid)."""
        pids = []
        want = f"pod{pod_uid}"
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cgroups = (entry / "cgroup").read_text()
            except OSError:
                continue
            if want in cgroups:
                pids.append(int(entry.name))
        return sorted(pids)

    def netns_of(self, pod_uid: str) -> str:
        """A ``/proc/<pid>/ns/net`` path inside pod ``pod_uid`` (its pause process)."""
        pids = self.pod_pids(pod_uid)
        if not pids:
            raise AssertionError(f"no process of pod {pod_uid} on this node")
        return f"/proc/{pids[0]}/ns/net"

    def pod_log(self, namespace: str, name: str, uid: str, container: str) -> str:
        """The container's log as the kubelet keeps it (/var/log/pods/<ns>_<name>_<uid>)."""
        d = Path("/var/log/pods") / f"{namespace}_{name}_{uid}" / container
        return "".join(p.read_text(errors="replace") for p in sorted(d.glob("*.log")))

    def logs(self) -> str:
        parts = []
        for proc in (self._kubelet, self._kcm, self._containerd):
            if proc is not None:
                parts.append(f"--- {proc.name}\n{proc.log_tail(60)}")
        return "\n".join(parts)

    # -- stop helpers ------------------------------------------------------

    def _delete_all_pods(self) -> None:
        """Delete this node's pods and wait until the kubelet has torn them down."""
        with self.cluster.core_v1() as v1:
            selector = f"spec.nodeName={self.name}"
            for pod in v1.list_pod_for_all_namespaces(field_selector=selector).items:
                v1.delete_namespaced_pod(
                    pod.metadata.name, pod.metadata.namespace, grace_period_seconds=1
                )

            def gone() -> bool:
                return not v1.list_pod_for_all_namespaces(field_selector=selector).items

            with contextlib.suppress(AssertionError):
                wait_for(gone, timeout=90, what=f"the pods on {self.name} torn down")
        # The kubelet removes a sandbox (CNI DEL) after the pod object is gone.
        with contextlib.suppress(AssertionError):
            wait_for(lambda: not self._sandboxes(), timeout=30, what="sandboxes removed")

    def _sandboxes(self) -> list[str]:
        out = self.ctr("containers", "list", "-q", check=False).stdout
        return [line for line in out.split() if line]

    def _stop_leftover_tasks(self) -> None:
        for cid in self._sandboxes():
            self.ctr("tasks", "kill", "-s", "SIGKILL", cid, check=False)
            self.ctr("tasks", "delete", "-f", cid, check=False)

    def _remove_cni_chains(self) -> None:
        """Our pods' firewall rules went with CNI DEL; the plugin's chain and its jump from
        FORWARD stay: remove them when no rule is left in the chain (another CNI user's
        rules keep it)."""
        listing = _run("iptables", "-w", "-S", "CNI-FORWARD", check=False)
        if listing.returncode != 0:
            return
        rules = [ln for ln in listing.stdout.splitlines() if ln.startswith("-A ")]
        if any("-j CNI-ADMIN" not in ln for ln in rules):
            return  # a pod's rule: someone else's, or ours not yet deleted
        jump = ["FORWARD", "-m", "comment", "--comment", "CNI firewall plugin rules"]
        for _ in range(10):  # one jump per ADD that found none; delete every copy
            if _run("iptables", "-w", "-D", *jump, "-j", "CNI-FORWARD", check=False).returncode:
                break
        _run("iptables", "-w", "-F", "CNI-FORWARD", check=False)
        _run("iptables", "-w", "-X", "CNI-FORWARD", check=False)
        admin = _run("iptables", "-w", "-S", "CNI-ADMIN", check=False)
        if admin.returncode == 0 and not any(
            ln.startswith("-A ") for ln in admin.stdout.splitlines()
        ):
            _run("iptables", "-w", "-X", "CNI-ADMIN", check=False)

    def _remove_cgroups(self) -> None:
        """The kubepods trees the kubelet made (empty once every pod is gone)."""
        for hierarchy in Path("/sys/fs/cgroup").iterdir():
            tree = hierarchy / "kubepods"
            if not tree.is_dir():
                continue
            for d in sorted(tree.rglob("*"), key=lambda p: len(p.parts), reverse=True):
                if d.is_dir():
                    with contextlib.suppress(OSError):
                        d.rmdir()
            with contextlib.suppress(OSError):
                tree.rmdir()


@contextlib.contextmanager
def kube_node(cluster: KubeCluster, workdir: Path, images: list[str]) -> Iterator[KubeNode]:
    with KubeNode(cluster, workdir, images=images) as node:
        yield node


def pod_ready(pod: Any) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in (pod.status.conditions or []))
