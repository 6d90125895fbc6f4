"""deploy/kubernetes/ against a real kube-apiserver with ``--authorization-mode=RBAC``.

* Every manifest is accepted by a server-side dry-run apply (and the dry run persists
  nothing; a broken DaemonSet is refused, so the check can fail).
* retinad with a TokenRequest token of the manifests' ServiceAccount, bound only to the
  manifests' ClusterRole, resolves pods, their owners and the API server's addresses with
  no 403: in process (the resolver the daemon builds) and as the real daemon, which counts
  exact UDP traffic from a pod's address (a network namespace behind a veth) under the
  pod's name and workload.
* With any one rule of that ClusterRole removed, the follower of that resource logs the
  403 (naming the resource and the RBAC fix) and stays down, and so does
  ``retinad_resolver_up{resolver="kubernetes"}``; the others still sync.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException
from prometheus_client.parser import text_string_to_metric_families

from retinad.config.schema import (
    KubernetesResolverSettings,
    ResolverSettings,
    Settings,
)
from retinad.model import Endpoint
from retinad.resolvers import kubernetes as kube
from retinad.resolvers.base import ResolverContext
from retinad.resolvers.follow import Backoff
from tests.daemon_proc import DaemonProcess, http_get, wait_for
from tests.deploy import manifests as m
from tests.deploy.scrape import serving
from tests.kube_cluster import KubeCluster
from tests.netns import Netns, delete_link, veth_to

NODE = "node-rbac"
CONTAINERS = [{"name": "main", "image": "registry.invalid/pause:test"}]
ip = ipaddress.ip_address


# --- helpers -------------------------------------------------------------------------


def all_manifests() -> list[m.Doc]:
    """The kustomization's objects, then the optional files it leaves out."""
    return [*m.kustomized(), *m.load("rbac-cluster-scope.yaml"), *m.load("servicemonitor.yaml")]


def api_manifests() -> list[m.Doc]:
    """What the test apiserver can take: all but the ServiceMonitor. Any custom resource
    crashes the suite's v1.20.2 build (its vendored reflect2 predates Go 1.18's map
    iterator: SIGSEGV in json-iterator's map encoder), so that one is checked against the
    Service and DaemonSet instead (test_service_monitor_selects_the_metrics_port)."""
    return [d for d in all_manifests() if d["kind"] != "ServiceMonitor"]


def owner(kind: str, obj: Any, api_version: str) -> dict[str, Any]:
    return {
        "apiVersion": api_version,
        "kind": kind,
        "name": obj.metadata.name,
        "uid": obj.metadata.uid,
        "controller": True,
    }


def settings_for(kubeconfig: Path) -> Settings:
    return Settings(
        resolvers=ResolverSettings(
            order=["kubernetes"],
            kubernetes=KubernetesResolverSettings(
                kubeconfig=str(kubeconfig), node_name=NODE, scope="node"
            ),
        ),
    )


class Records(logging.Handler):
    """The resolver's log lines, as the daemon would print them."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self._lock2 = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        with self._lock2:
            self.lines.append(record.getMessage())

    def text(self) -> str:
        with self._lock2:
            return "\n".join(self.lines)


def start_resolver(kubeconfig: Path, name: str) -> tuple[kube.KubernetesResolver, Records]:
    log = logging.getLogger(f"retinad.test.rbac.{name}")
    log.setLevel(logging.DEBUG)
    records = Records()
    log.addHandler(records)
    ctx = ResolverContext(settings_for(kubeconfig), log, lambda: None)
    r = kube.create(ctx, backoff=lambda: Backoff(0.05, 0.5), watch_timeout=5)
    r.start()
    return r, records


def bind_service_account(admin: Any, applier: m.Applier, sa: str, role: m.Doc) -> None:
    """ServiceAccount ``retinad/<sa>`` bound to ``role`` (applied too) and nothing else."""
    applier.apply(
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": sa, "namespace": "retinad"},
        }
    )
    applier.apply(role)
    applier.apply(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": sa},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": role["metadata"]["name"],
            },
            "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": "retinad"}],
        }
    )


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> Samples:
    status, body = http_get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for fam in text_string_to_metric_families(body)
        for s in fam.samples
    }


def value(samples: Samples, metric: str, labels: dict[str, str]) -> float:
    return samples.get((metric, frozenset(labels.items())), 0.0)


# --- fixtures ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def applier(admin_api: Any) -> m.Applier:
    return m.Applier(admin_api)


@pytest.fixture(scope="module")
def deployed(rbac_cluster: KubeCluster, applier: m.Applier) -> list[m.Doc]:
    """The kustomization applied for real (no controller runs, so no retinad pod starts)."""
    docs = m.kustomized()
    list(applier.apply_all(docs))
    return docs


@pytest.fixture(scope="module")
def workloads(
    rbac_cluster: KubeCluster, admin_api: Any, deployed: list[m.Doc]
) -> dict[str, Endpoint]:
    """Pods on NODE owned by a ReplicaSet of a Deployment and by a bare Job, plus one on
    another node; returns the expected endpoint per pod IP."""
    ns = "shop"
    rbac_cluster.create_namespace(ns)
    apps, batch = client.AppsV1Api(admin_api), client.BatchV1Api(admin_api)
    labels = {"app": "web", "pod-template-hash": "5f7c9"}
    template = {"metadata": {"labels": labels}, "spec": {"containers": CONTAINERS}}
    web = apps.create_namespaced_deployment(
        ns,
        {
            "metadata": {"name": "web"},
            "spec": {"selector": {"matchLabels": labels}, "template": template},
        },
    )
    # Not named <deployment>-<hash>: only the ReplicaSet's owner reference names "web".
    rs = apps.create_namespaced_replica_set(
        ns,
        {
            "metadata": {
                "name": "frontend",
                "ownerReferences": [owner("Deployment", web, "apps/v1")],
            },
            "spec": {"selector": {"matchLabels": labels}, "template": template},
        },
    )
    job = batch.create_namespaced_job(
        ns,
        {
            "metadata": {"name": "migrate"},
            "spec": {"template": {"spec": {"containers": CONTAINERS, "restartPolicy": "Never"}}},
        },
    )
    rbac_cluster.create_pod(
        "web-1",
        ns,
        NODE,
        "10.245.1.10",
        owner_refs=[owner("ReplicaSet", rs, "apps/v1")],
        labels=labels,
    )
    rbac_cluster.create_pod(
        "migrate-1", ns, NODE, "10.245.1.11", owner_refs=[owner("Job", job, "batch/v1")]
    )
    rbac_cluster.create_pod("elsewhere", ns, "node-other", "10.245.1.12")
    return {
        "10.245.1.10": Endpoint(
            namespace=ns,
            name="web-1",
            workload_kind="Deployment",
            workload_name="web",
            labels=labels,
        ),
        "10.245.1.11": Endpoint(
            namespace=ns, name="migrate-1", workload_kind="Job", workload_name="migrate", labels={}
        ),
    }


@pytest.fixture(scope="module")
def sa_kubeconfig(
    rbac_cluster: KubeCluster, deployed: list[m.Doc], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    sa = m.find(deployed, "ServiceAccount")["metadata"]
    token = rbac_cluster.service_account_token(sa["namespace"], sa["name"])
    return rbac_cluster.write_kubeconfig(tmp_path_factory.mktemp("sa") / "kubeconfig", token)


# --- 1. the manifests ----------------------------------------------------------------


def test_every_manifest_passes_a_server_side_dry_run_apply(
    rbac_cluster: KubeCluster, applier: m.Applier
) -> None:
    docs = api_manifests()
    # Namespaced objects need their namespace to exist.
    applier.apply(m.find(docs, "Namespace"))
    for doc in docs:
        out = applier.apply(doc, dry_run=True)
        assert (out.kind, out.metadata.name) == (doc["kind"], doc["metadata"]["name"])
    daemonset = m.find(docs, "DaemonSet")
    assert not applier.exists(daemonset), "a dry run persisted the DaemonSet"

    # The check can fail: the same DaemonSet with an invalid port name is refused.
    broken = m.find(m.load("daemonset.yaml"), "DaemonSet")
    broken["spec"]["template"]["spec"]["containers"][0]["ports"][0]["name"] = "Metrics_Port"
    with pytest.raises(Exception, match="Invalid value") as err:
        applier.apply(broken, dry_run=True)
    assert "422" in str(err.value)


def test_service_monitor_selects_the_metrics_port() -> None:
    docs = all_manifests()
    monitor = m.find(docs, "ServiceMonitor")
    service = m.find(docs, "Service")
    pod = m.find(docs, "DaemonSet")["spec"]["template"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [service["metadata"]["namespace"]]
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    port = {p["name"]: p for p in service["spec"]["ports"]}[monitor["spec"]["endpoints"][0]["port"]]
    container_ports = {p["name"]: p for p in pod["spec"]["containers"][0]["ports"]}
    assert container_ports[port["targetPort"]]["containerPort"] == port["port"] == 10095
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(port["port"])
    assert annotations["prometheus.io/path"] == monitor["spec"]["endpoints"][0]["path"]


def test_kustomization_covers_the_manifests_consistently() -> None:
    k = m.kustomization()
    files = sorted(p.name for p in m.DEPLOY.glob("*.yaml") if p.name != "kustomization.yaml")
    optional = {"rbac-cluster-scope.yaml", "servicemonitor.yaml"}
    assert sorted([*k["resources"], *optional]) == files
    docs = all_manifests()
    for doc in docs:  # kustomize's namespace setting moves these; nothing else may differ
        if doc["kind"] not in (
            "Namespace",
            "ClusterRole",
            "ClusterRoleBinding",
            "CustomResourceDefinition",
        ):
            assert doc["metadata"].get("namespace") == k["namespace"], doc["metadata"]
    container = m.find(docs, "DaemonSet")["spec"]["template"]["spec"]["containers"][0]
    image = k["images"][0]
    assert container["image"].split(":")[0] == image["name"]
    env = {e["name"]: e for e in container["env"]}
    assert env[kube.NODE_NAME_ENV]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"


def test_the_configmap_toml_is_a_valid_retinad_config(tmp_path: Path) -> None:
    """Valid as retinad validates it: outside a pod, check-config refuses it for the one
    reason only a pod can fix (no in-cluster config); with a kubeconfig file instead of the
    service account, the very same TOML passes."""
    toml = m.find(m.load("configmap.yaml"), "ConfigMap")["data"]["retinad.toml"]

    def check(text: str) -> subprocess.CompletedProcess[str]:
        path = tmp_path / "retinad.toml"
        path.write_text(text)
        env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}
        return subprocess.run(
            [sys.executable, "-m", "retinad", "check-config", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env=env,
        )

    outside = check(toml)
    assert outside.returncode == 2, outside.stdout + outside.stderr
    assert "no in-cluster configuration is available" in outside.stderr
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: k, cluster: {server: 'https://127.0.0.1:6443'}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: c, context: {cluster: k, user: u}}]\n"
    )
    assert 'kubeconfig = ""' in toml
    inside = check(toml.replace('kubeconfig = ""', f'kubeconfig = "{kubeconfig}"'))
    assert inside.returncode == 0, inside.stdout + inside.stderr


# --- 2. the ServiceAccount bound to the ClusterRole, and nothing else -----------------


def test_service_account_token_resolves_pods_owners_and_apiserver_without_403(
    rbac_cluster: KubeCluster, admin_api: Any, workloads: dict[str, Endpoint], sa_kubeconfig: Path
) -> None:
    # The token really is limited: it may not read Secrets or change pods.
    with _sa_core(rbac_cluster, sa_kubeconfig) as v1:
        with pytest.raises(ApiException) as denied:
            v1.list_namespaced_secret("shop")
        assert denied.value.status == 403

    r, records = start_resolver(sa_kubeconfig, "full")
    try:
        assert r.wait_up(20), {n: f.follower.up for n, f in r.resources.items()}
        for addr, want in workloads.items():
            wait_for(
                lambda a=addr, w=want: r.by_ip(ip(a)) == w, timeout=10, what=f"{addr} -> {want}"
            )
        assert r.by_ip(ip("10.245.1.12")) is None  # another node's pod: not ours
        assert r.size() == len(workloads)
        wait_for(r.apiserver_addresses, timeout=10, what="API server addresses")
        assert r.apiserver_addresses() == [
            (ip(rbac_cluster.advertise_address), rbac_cluster.apiserver_port)
        ]
    finally:
        r.stop()
    assert not _forbidden(records.text()), records.text()


class _sa_core:
    def __init__(self, cluster: KubeCluster, kubeconfig: Path) -> None:
        self._api = kube.load_api_client(str(kubeconfig))

    def __enter__(self) -> Any:
        return client.CoreV1Api(self._api)

    def __exit__(self, *exc: object) -> None:
        self._api.close()


RULES = ["pods", "replicasets", "jobs", "endpoints"]
FOLLOWER = {"pods": "pods", "replicasets": "replicasets", "jobs": "jobs", "endpoints": "apiserver"}
USER = 'User "system:serviceaccount:retinad:{sa}" cannot list resource'
FORBIDDEN = {
    "pods": f'pods is forbidden: {USER} "pods" in API group "" at the cluster scope',
    "replicasets": (
        f'replicasets.apps is forbidden: {USER} "replicasets" in API group "apps"'
        " at the cluster scope"
    ),
    "jobs": f'jobs.batch is forbidden: {USER} "jobs" in API group "batch" at the cluster scope',
    "endpoints": (
        f'endpoints "kubernetes" is forbidden: {USER} "endpoints" in API group ""'
        ' in the namespace "default"'
    ),
}


@pytest.mark.parametrize("removed", RULES)
def test_one_rule_removed_is_a_named_403_and_keeps_the_resolver_down(
    rbac_cluster: KubeCluster,
    applier: m.Applier,
    admin_api: Any,
    deployed: list[m.Doc],
    tmp_path: Path,
    removed: str,
) -> None:
    sa = f"retinad-no-{removed}"
    bind_service_account(admin_api, applier, sa, m.cluster_role_without(deployed, removed, name=sa))
    token = rbac_cluster.service_account_token("retinad", sa)
    kubeconfig = rbac_cluster.write_kubeconfig(tmp_path / "kubeconfig", token)
    r, records = start_resolver(kubeconfig, removed)
    try:
        others = [f for name, f in r.resources.items() if name != FOLLOWER[removed]]
        for f in others:
            assert f.follower.wait_up(20), f"{f.name} did not sync"
        want = (
            f"kubernetes-{FOLLOWER[removed]}: not connected (ApiError: HTTP 403 Forbidden: "
            + FORBIDDEN[removed].format(sa=sa)
            + " (RBAC: retinad's ServiceAccount needs list and watch on that resource;"
            " see deploy/kubernetes/rbac.yaml))"
        )
        wait_for(lambda: want in records.text(), timeout=10, what=f"the 403 for {removed} logged")
        assert not r.up
        assert not r.resources[FOLLOWER[removed]].follower.up
        assert sum(_forbidden(line) for line in records.lines) >= 1
        assert all(FOLLOWER[removed] in line for line in records.lines if _forbidden(line))
    finally:
        r.stop()


# --- 3. the real daemon with the ServiceAccount token --------------------------------

UDP4 = 14 + 20 + 8


@pytest.fixture
def pod_netns() -> Iterator[tuple[Netns, str]]:
    """A network namespace with web-1's address behind a veth, as a CNI plugin makes it."""
    ns = Netns()
    link = veth_to(ns, host_ip="10.245.1.1", peer_ip="10.245.1.10")
    try:
        yield ns, link.host
    finally:
        delete_link(link.host)
        ns.close()


def daemonset_capabilities() -> list[str]:
    """The DaemonSet's ``capabilities.add`` (it drops ALL first)."""
    pod = m.find(m.load("daemonset.yaml"), "DaemonSet")["spec"]["template"]["spec"]
    caps = pod["containers"][0]["securityContext"]["capabilities"]
    assert caps["drop"] == ["ALL"]
    return list(caps["add"])


CAPABILITY_NUMBERS = {
    "NET_ADMIN": 12,
    "NET_RAW": 13,
    "SYS_PTRACE": 19,
    "SYS_ADMIN": 21,
    "SYS_RESOURCE": 24,
    "PERFMON": 38,
    "BPF": 39,
}


def capability_mask(caps: list[str]) -> int:
    return sum(1 << CAPABILITY_NUMBERS[c] for c in caps)


def effective_capabilities(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    raise AssertionError(f"no CapEff in /proc/{pid}/status")


def with_capabilities(caps: list[str]) -> list[str]:
    """A command prefix: root with only ``caps`` (bounding set), as the pod's container."""
    keep = ",".join(f"+{c.lower()}" for c in caps)
    return ["setpriv", f"--bounding-set=-all,{keep}", "--inh-caps=-all", "--"]


def unquoted(log: str) -> str:
    """The daemon's logfmt lines with the escaped quotes of msg="..." undone."""
    return log.replace('\\"', '"')


def run_daemon(
    workdir: Path, kubeconfig: Path, port: int, *, packetparser: bool, caps: list[str] | None = None
) -> DaemonProcess:
    cfg = workdir / "retinad.toml"
    cfg.write_text(
        f'[web]\nlisten_address = ["127.0.0.1:{port}"]\n'
        '[metrics]\nmode = "advanced"\n'
        f"[packetparser]\nenabled = {str(packetparser).lower()}\ncontainer_interfaces = true\n"
        "[dropreason]\nenabled = false\n"
        '[resolvers]\norder = ["kubernetes", "host"]\n'
        f'[resolvers.kubernetes]\nkubeconfig = "{kubeconfig}"\nscope = "node"\n'
    )
    return DaemonProcess(
        ["--config.file", str(cfg)],
        workdir=workdir,
        env={kube.NODE_NAME_ENV: NODE},
        prefix=with_capabilities(caps) if caps is not None else (),
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


SENDER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(int(sys.argv[2])):
    s.sendto(b"k" * int(sys.argv[3]), (sys.argv[1], 9))
"""


def test_daemon_with_the_service_account_counts_a_pod_by_name_with_no_403(
    workloads: dict[str, Endpoint],
    sa_kubeconfig: Path,
    pod_netns: tuple[Netns, str],
    tmp_path: Path,
) -> None:
    ns, _host_veth = pod_netns
    port = free_port()
    # With only the DaemonSet's capabilities, as its container would have them.
    caps = daemonset_capabilities()
    d = run_daemon(tmp_path, sa_kubeconfig, port, packetparser=True, caps=caps)
    try:
        wait_for(
            lambda: (
                _serving(port)
                and value(scrape(port), "retinad_resolver_up", {"resolver": "kubernetes"}) == 1
            ),
            timeout=120,
            what="retinad_resolver_up{resolver=kubernetes} 1",
        )
        assert effective_capabilities(d.proc.pid) == capability_mask(caps)
        assert value(scrape(port), "retinad_resolver_endpoints", {"resolver": "kubernetes"}) == len(
            workloads
        )
        web = workloads["10.245.1.10"]

        def sent() -> tuple[float, float]:
            return egress_of(port, web)

        def veth_attached() -> bool:
            ns.run(sys.executable, "-c", SENDER, "10.245.1.1", "1", "10")
            return sent()[0] > 0

        try:
            wait_for(veth_attached, timeout=30, what="web-1's veth attached and named")
        except AssertionError:
            series = [k for k in scrape(port) if k[0] == "retinad_endpoint_forward_packets_total"]
            raise AssertionError(f"no egress series of {web} in {series}\n{d.log}") from None
        before = sent()
        ns.run(sys.executable, "-c", SENDER, "10.245.1.1", "7", "100")
        want = (before[0] + 7, before[1] + 7 * (UDP4 + 100))
        wait_for(lambda: sent() == want, timeout=10, what=f"web-1 egress {want} (now {sent()})")
    finally:
        rc = d.stop()
    log = d.log
    assert rc == 0, log
    assert not _forbidden(log), log


def egress_of(port: int, ep: Endpoint) -> tuple[float, float]:
    """Forward packets and bytes of ``ep``'s egress series, as the daemon on ``port`` names it."""
    labels = {
        "direction": "egress",
        "namespace": ep.namespace,
        "name": ep.name,
        "workload_kind": ep.workload_kind,
        "workload_name": ep.workload_name,
    }
    now = scrape(port)
    return (
        value(now, "retinad_endpoint_forward_packets_total", labels),
        value(now, "retinad_endpoint_forward_bytes_total", labels),
    )


def _forbidden(text: str) -> bool:
    """An HTTP 403 in a log: "403" as a status word, not inside a port number (":33403")
    or a timestamp's milliseconds (".403Z"), which free ports and clocks make likely."""
    return bool(re.search(r"\b403\b|Forbidden", text))


def _serving(port: int) -> bool:
    return serving(port)


def test_daemon_with_a_rule_removed_logs_the_403_and_exports_resolver_down(
    rbac_cluster: KubeCluster,
    applier: m.Applier,
    admin_api: Any,
    deployed: list[m.Doc],
    tmp_path: Path,
) -> None:
    sa = "retinad-daemon-no-replicasets"
    bind_service_account(
        admin_api, applier, sa, m.cluster_role_without(deployed, "replicasets", name=sa)
    )
    kubeconfig = rbac_cluster.write_kubeconfig(
        tmp_path / "kubeconfig", rbac_cluster.service_account_token("retinad", sa)
    )
    port = free_port()
    d = run_daemon(tmp_path, kubeconfig, port, packetparser=False)
    try:
        want = FORBIDDEN["replicasets"].format(sa=sa)
        wait_for(lambda: want in unquoted(d.log), timeout=60, what=f"{want!r} in the log")
        wait_for(lambda: _serving(port), timeout=30, what="/metrics")
        samples = scrape(port)
        assert value(samples, "retinad_resolver_up", {"resolver": "kubernetes"}) == 0
    finally:
        rc = d.stop()
    assert rc == 0, d.log
    line = next(ln for ln in unquoted(d.log).splitlines() if _forbidden(ln))
    assert "kubernetes-replicasets" in line and "deploy/kubernetes/rbac.yaml" in line, line


@pytest.mark.parametrize("dropped", daemonset_capabilities())
def test_each_daemonset_capability_is_needed(dropped: str) -> None:
    """``retinad check`` passes with the DaemonSet's capabilities, and fails without any one."""
    caps = daemonset_capabilities()

    def check(keep: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*with_capabilities(keep), sys.executable, "-m", "retinad", "check"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    full = check(caps)
    assert full.returncode == 0, full.stdout + full.stderr
    less = check([c for c in caps if c != dropped])
    assert less.returncode == 1, less.stdout + less.stderr
    assert "MISSING" in less.stdout and "retinad cannot run" in less.stdout, less.stdout


# --- 4. the DaemonSet's own pod template, run by the suite's dockerd -----------------

#: Docker 20.10 knows neither capability; SYS_ADMIN covers both (docs/KUBERNETES.md).
DOCKER_20_CAPS = {"BPF": "SYS_ADMIN", "PERFMON": "SYS_ADMIN"}
SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


def docker_args_of_pod_template(
    template: m.Doc, configmaps: dict[str, m.Doc], workdir: Path, env: dict[str, str]
) -> dict[str, Any]:
    """What kubelet would make of the DaemonSet's pod template, as docker API arguments:
    host network, the container's args, env (downward API resolved by ``env``), caps,
    read-only root, and every volume (hostPath, ConfigMap as files, emptyDir in memory)."""
    spec = template["spec"]
    (c,) = spec["containers"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    binds, tmpfs = [], {}
    for mount in c["volumeMounts"]:
        vol = volumes[mount["name"]]
        ro = ":ro" if mount.get("readOnly") else ""
        if "hostPath" in vol:
            binds.append(f"{vol['hostPath']['path']}:{mount['mountPath']}{ro}")
        elif "configMap" in vol:
            files = workdir / f"configmap-{vol['name']}"
            files.mkdir()
            for key, text in configmaps[vol["configMap"]["name"]]["data"].items():
                (files / key).write_text(text)
                (files / key).chmod(0o644)
            binds.append(f"{files}:{mount['mountPath']}{ro}")
        elif "emptyDir" in vol:
            size = vol["emptyDir"].get("sizeLimit", "64Mi").replace("Mi", "m")
            tmpfs[mount["mountPath"]] = f"size={size}"
        else:
            raise AssertionError(f"volume kind not handled: {vol}")
    sec = c["securityContext"]
    caps = sorted({DOCKER_20_CAPS.get(cap, cap) for cap in sec["capabilities"]["add"]})
    assert spec["hostNetwork"] is True
    return {
        "args": list(c["args"]),
        "env": [f"{k}={v}" for k, v in env.items()],
        "binds": binds,
        "tmpfs": tmpfs,
        "cap_drop": list(sec["capabilities"]["drop"]),
        "cap_add": caps,
        "read_only": bool(sec["readOnlyRootFilesystem"]),
        "pid_mode": "host" if spec.get("hostPID") else None,
    }


@pytest.mark.timeout(1200)  # the first user of the image builds it (minutes when cold)
def test_daemonset_pod_template_in_the_image_names_a_pod_via_in_cluster_config(
    rbac_cluster: KubeCluster,
    deployed: list[m.Doc],
    workloads: dict[str, Endpoint],
    pod_netns: tuple[Netns, str],
    docker_engine: Any,
    retinad_image: str,
    tmp_path: Path,
) -> None:
    """retinad from the image, set up exactly as the DaemonSet's pod template says (the
    ConfigMap's TOML, the in-cluster service account files and KUBERNETES_SERVICE_*
    variables kubelet would provide), counts a pod's traffic under its name and owner."""
    from tests.docker_engine import LABEL, Things, unique

    ns, _ = pod_netns
    ds = m.find(deployed, "DaemonSet")
    sa_name = ds["spec"]["template"]["spec"]["serviceAccountName"]
    namespace = ds["metadata"]["namespace"]
    sa = tmp_path / "serviceaccount"
    sa.mkdir()
    (sa / "token").write_text(rbac_cluster.service_account_token(namespace, sa_name))
    (sa / "ca.crt").write_bytes(rbac_cluster.ca_cert_path.read_bytes())
    (sa / "namespace").write_text(namespace)
    for f in sa.iterdir():
        f.chmod(0o644)
    port = free_port()
    env = {
        # kubelet's service variables; with hostNetwork the API is reached on the node.
        "KUBERNETES_SERVICE_HOST": "127.0.0.1",
        "KUBERNETES_SERVICE_PORT": str(rbac_cluster.apiserver_port),
        kube.NODE_NAME_ENV: NODE,  # the downward API's spec.nodeName
    }
    configmaps = {d["metadata"]["name"]: d for d in deployed if d["kind"] == "ConfigMap"}
    run = docker_args_of_pod_template(ds["spec"]["template"], configmaps, tmp_path, env)
    things = Things(docker_engine)
    api = things.api
    try:
        host_config = api.create_host_config(
            network_mode="host",
            pid_mode=run["pid_mode"],
            cap_drop=run["cap_drop"],
            cap_add=run["cap_add"],
            binds=[*run["binds"], f"{sa}:{SA_DIR}:ro"],
            read_only=run["read_only"],
            tmpfs=run["tmpfs"],
        )
        created = api.create_container(
            retinad_image,
            # The ConfigMap listens on :10095; other jobs share this host's network.
            command=[*run["args"], "--web.listen-address", f"127.0.0.1:{port}"],
            environment=run["env"],
            name=unique("rt-retinad-pod"),
            labels={LABEL: "1"},
            host_config=host_config,
            stop_signal="SIGTERM",
        )
        things.containers.append(created["Id"])
        api.start(created["Id"])

        def logs() -> str:
            return unquoted(bytes(api.logs(created["Id"])).decode(errors="replace"))

        def up() -> bool:
            if not api.inspect_container(created["Id"])["State"]["Running"]:
                raise AssertionError(f"retinad's container exited:\n{logs()}")
            return _serving(port) and (
                value(scrape(port), "retinad_resolver_up", {"resolver": "kubernetes"}) == 1
            )

        wait_for(up, timeout=180, what="the pod's retinad serving with the kubernetes resolver up")
        web = workloads["10.245.1.10"]

        def sent() -> tuple[float, float]:
            return egress_of(port, web)

        def named() -> bool:
            ns.run(sys.executable, "-c", SENDER, "10.245.1.1", "1", "10")
            return sent()[0] > 0

        wait_for(named, timeout=30, what="web-1's veth attached and named")
        before = sent()
        ns.run(sys.executable, "-c", SENDER, "10.245.1.1", "6", "80")
        want = (before[0] + 6, before[1] + 6 * (UDP4 + 80))
        wait_for(lambda: sent() == want, timeout=10, what=f"web-1 egress {want} (now {sent()})")
        api.stop(created["Id"], timeout=20)
        assert api.inspect_container(created["Id"])["State"]["ExitCode"] == 0, logs()
        text = logs()
        assert not _forbidden(text), text
        assert "kubernetes-pods: index in sync" in text, text
    finally:
        things.close()
