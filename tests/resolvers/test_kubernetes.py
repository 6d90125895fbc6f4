"""The kubernetes resolver against a real kube-apiserver + etcd (tests/kube_cluster.py).

One cluster serves the module; each test has its own namespace, its own IP block
(10.244.<test>.x, fd00:<test>::x) and its own resolver, built from a ResolverContext whose
[resolvers.kubernetes] points at the cluster's kubeconfig with node_name "node-a". Every
expectation is checked against what the real API returns; waits are polls with deadlines.
The fault proxy (kube_fault_proxy.py) only cuts connections in front of the real server.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import ssl
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from retinad.config.schema import (
    KubernetesResolverSettings,
    PacketParserSettings,
    ResolverSettings,
    Settings,
)
from retinad.errors import ConfigError
from retinad.model import Endpoint
from retinad.resolvers import kube_workload as kw
from retinad.resolvers import kubernetes as kube
from retinad.resolvers.base import ResolverContext
from retinad.resolvers.follow import Backoff
from tests.daemon_proc import wait_for
from tests.kube_cluster import KubeCluster, apiserver_binary_path, ensure_built
from tests.resolvers.kube_fault_proxy import FaultProxy

NODE = "node-a"
WATCH_TIMEOUT = 3
"""Short server-side watch timeouts: every test also exercises renewing a watch from its
resourceVersion without losing events."""
CONTAINERS = [{"name": "main", "image": "registry.invalid/pause:test"}]
ip = ipaddress.ip_address

STOP_SECONDS: list[float] = []


# --- fixtures and helpers ------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeCluster]:
    built = apiserver_binary_path()
    binary = built if os.access(built, os.X_OK) else ensure_built()
    with KubeCluster(tmp_path_factory.mktemp("kube"), apiserver_binary=binary) as c:
        yield c


@pytest.fixture(scope="module")
def api(cluster: KubeCluster) -> Iterator[Any]:
    with cluster.api_client() as a:
        yield a


def settings_for(kubeconfig: Path | str, *, scope: str = "node", remote: bool = False) -> Settings:
    return Settings(
        packetparser=PacketParserSettings(remote_context=remote),
        resolvers=ResolverSettings(
            order=["kubernetes"],
            kubernetes=KubernetesResolverSettings(
                kubeconfig=str(kubeconfig),
                node_name=NODE,
                scope=scope,  # type: ignore[arg-type]
            ),
        ),
    )


def make(
    kubeconfig: Path | str,
    *,
    scope: str = "node",
    remote: bool = False,
    changed: threading.Event | None = None,
) -> kube.KubernetesResolver:
    ctx = ResolverContext(
        settings_for(kubeconfig, scope=scope, remote=remote),
        logging.getLogger("retinad.test.kubernetes"),
        (changed or threading.Event()).set,
    )
    return kube.create(ctx, backoff=lambda: Backoff(0.05, 0.5), watch_timeout=WATCH_TIMEOUT)


@contextlib.contextmanager
def running(
    kubeconfig: Path | str,
    *,
    scope: str = "node",
    wait_up: bool = True,
    changed: threading.Event | None = None,
) -> Iterator[kube.KubernetesResolver]:
    """A started resolver; on the way out it must stop in under a second."""
    r = make(kubeconfig, scope=scope, changed=changed)
    r.start()
    try:
        if wait_up:
            assert r.wait_up(15), {n: f.follower.up for n, f in r.resources.items()}
        yield r
    except BaseException:
        r.stop()
        raise
    started = time.monotonic()
    r.stop()
    took = time.monotonic() - started
    STOP_SECONDS.append(took)
    assert took < 5.0, f"stop() took {took:.3f}s"  # prompt, not a watch timeout
    assert not r.alive
    leftover = [t.name for t in threading.enumerate() if t.name.startswith("resolver-kubernetes")]
    assert leftover == []


def namespace(cluster: KubeCluster, name: str) -> str:
    cluster.create_namespace(name)
    return name


def owner(kind: str, obj: Any, api_version: str) -> dict[str, Any]:
    meta = obj.metadata if not isinstance(obj, dict) else None
    name = meta.name if meta else obj["metadata"]["name"]
    uid = meta.uid if meta else obj["metadata"]["uid"]
    return {"apiVersion": api_version, "kind": kind, "name": name, "uid": uid, "controller": True}


def raw(cluster: KubeCluster, method: str, path: str, body: Any = None) -> Any:
    """The API's own JSON (for kinds the client no longer has, and for raw objects)."""
    req = urllib.request.Request(
        cluster.server_url + path,
        data=json.dumps(body).encode() if body is not None else None,
        method=method,
        headers={"Authorization": f"Bearer {cluster.token}", "Content-Type": "application/json"},
    )
    ctx = ssl.create_default_context(cafile=str(cluster.ca_cert_path))
    with urllib.request.urlopen(req, timeout=10, context=ctx) as resp:
        return json.load(resp)


def deployment(api: Any, ns: str, name: str) -> Any:
    labels = {"app": name}
    body = {
        "metadata": {"name": name},
        "spec": {
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": CONTAINERS}},
        },
    }
    return client.AppsV1Api(api).create_namespaced_deployment(ns, body)


def replicaset(api: Any, ns: str, name: str, labels: dict[str, str], owners: list[Any]) -> Any:
    body = {
        "metadata": {"name": name, "ownerReferences": owners},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": CONTAINERS}},
        },
    }
    return client.AppsV1Api(api).create_namespaced_replica_set(ns, body)


def job(api: Any, ns: str, name: str, owners: list[Any]) -> Any:
    body = {
        "metadata": {"name": name, "ownerReferences": owners},
        "spec": {"template": {"spec": {"containers": CONTAINERS, "restartPolicy": "Never"}}},
    }
    return client.BatchV1Api(api).create_namespaced_job(ns, body)


def cronjob(cluster: KubeCluster, ns: str, name: str) -> Any:
    """A batch/v1beta1 CronJob (what 1.20 serves; the client no longer has that version)."""
    body = {
        "apiVersion": "batch/v1beta1",
        "kind": "CronJob",
        "metadata": {"name": name},
        "spec": {
            "schedule": "*/5 * * * *",
            "jobTemplate": {
                "spec": {"template": {"spec": {"containers": CONTAINERS, "restartPolicy": "Never"}}}
            },
        },
    }
    return raw(cluster, "POST", f"/apis/batch/v1beta1/namespaces/{ns}/cronjobs", body)


def endpoint(ns: str, pod: str, kind: str, name: str, **labels: str) -> Endpoint:
    return Endpoint(namespace=ns, name=pod, workload_kind=kind, workload_name=name, labels=labels)


def resolves(
    r: kube.KubernetesResolver, addr: str, want: Endpoint | None, timeout: float = 10
) -> None:
    """Poll until ``addr`` resolves to exactly ``want``."""
    wait_for(
        lambda: r.by_ip(ip(addr)) == want or None,
        timeout=timeout,
        what=f"{addr} -> {want} (now {r.by_ip(ip(addr))})",
    )


def claiming_pods(api: Any, *, node: str | None) -> int:
    """How many pods the real API says claim an address (the index's pod count)."""
    selector = f"spec.nodeName={node}" if node else None
    pods = client.CoreV1Api(api).list_pod_for_all_namespaces(field_selector=selector).items
    return sum(
        1
        for p in pods
        if not p.spec.host_network
        and p.status.phase not in ("Succeeded", "Failed")
        and (p.status.pod_ips or p.status.pod_ip)
    )


def proxied_kubeconfig(cluster: KubeCluster, proxy: FaultProxy, path: Path) -> Path:
    config = json.loads(cluster.kubeconfig_path.read_text())
    config["clusters"][0]["cluster"]["server"] = proxy.url
    path.write_text(json.dumps(config))
    return path


# --- 1. workloads from owner references ----------------------------------------------


def test_pods_are_named_by_their_workload(cluster: KubeCluster, api: Any) -> None:
    ns = namespace(cluster, "t1-workloads")
    web = deployment(api, ns, "web")
    rs_labels = {"app": "web", "pod-template-hash": "7d4b9c"}
    # Named against the <deployment>-<hash> convention, so only the RS's owner reference
    # can name the Deployment.
    web_rs = replicaset(api, ns, "frontend-set", rs_labels, [owner("Deployment", web, "apps/v1")])
    lone_rs = replicaset(api, ns, "lone-set", {"app": "lone"}, [])
    nightly = cronjob(cluster, ns, "nightly")
    nightly_job = job(api, ns, "nightly-27100", [owner("CronJob", nightly, "batch/v1beta1")])
    once_job = job(api, ns, "once", [])
    sts = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "name": "db",
        "uid": "5c1d",
        "controller": True,
    }

    changed = threading.Event()
    with running(cluster.kubeconfig_path, changed=changed) as r:
        changed.clear()
        cluster.create_pod(
            "web-1",
            ns,
            NODE,
            ["10.244.1.10", "fd00:1::10"],
            owner_refs=[owner("ReplicaSet", web_rs, "apps/v1")],
            labels=rs_labels,
        )
        cluster.create_pod(
            "lone-1", ns, NODE, "10.244.1.11", owner_refs=[owner("ReplicaSet", lone_rs, "apps/v1")]
        )
        cluster.create_pod(
            "nightly-1", ns, NODE, "10.244.1.12", owner_refs=[owner("Job", nightly_job, "batch/v1")]
        )
        cluster.create_pod(
            "once-1", ns, NODE, "10.244.1.13", owner_refs=[owner("Job", once_job, "batch/v1")]
        )
        cluster.create_pod("db-0", ns, NODE, "10.244.1.14", owner_refs=[sts])
        bare_labels = {"example.com/team": "net_ops-7", "tier": ""}
        cluster.create_pod("bare", ns, NODE, "10.244.1.15", labels=bare_labels)
        cluster.create_pod("pending", ns, NODE, None)

        web_ep = endpoint(ns, "web-1", "Deployment", "web", **rs_labels)
        resolves(r, "10.244.1.10", web_ep)
        assert changed.is_set()  # ctx.on_change heard of it
        assert r.by_ip(ip("fd00:1::10")) == web_ep
        assert r.by_ip(ip("::ffff:10.244.1.10")) == web_ep  # v4-mapped is the v4 address
        resolves(r, "10.244.1.11", endpoint(ns, "lone-1", "ReplicaSet", "lone-set"))
        resolves(r, "10.244.1.12", endpoint(ns, "nightly-1", "CronJob", "nightly"))
        resolves(r, "10.244.1.13", endpoint(ns, "once-1", "Job", "once"))
        resolves(r, "10.244.1.14", endpoint(ns, "db-0", "StatefulSet", "db"))
        resolves(r, "10.244.1.15", endpoint(ns, "bare", "Pod", "bare", **bare_labels))

        # The ReplicaSet is adopted by a Deployment: its pods are attributed again.
        lone = deployment(api, ns, "lone")
        client.AppsV1Api(api).patch_namespaced_replica_set(
            "lone-set",
            ns,
            {"metadata": {"ownerReferences": [owner("Deployment", lone, "apps/v1")]}},
        )
        resolves(r, "10.244.1.11", endpoint(ns, "lone-1", "Deployment", "lone"))

        # The index holds exactly the pods of node-a that the API says have an address.
        wait_for(
            lambda: r.size() == claiming_pods(api, node=NODE),
            timeout=10,
            what="index size == pods with an IP on node-a",
        )
        assert r.by_ifindex(1) is None


def test_pod_seen_before_its_replicaset_is_attributed_again_when_it_arrives(
    cluster: KubeCluster, api: Any
) -> None:
    """The pod and ReplicaSet watches are independent streams: a pod may arrive first.
    Feed the real API's JSON of both objects to the resolver in that order."""
    ns = namespace(cluster, "t1-order")
    dep = deployment(api, ns, "shop")
    rs = replicaset(api, ns, "shop-rs", {"app": "shop"}, [owner("Deployment", dep, "apps/v1")])
    cluster.create_pod(
        "shop-1", ns, NODE, "10.244.11.1", owner_refs=[owner("ReplicaSet", rs, "apps/v1")]
    )
    pod_json = raw(cluster, "GET", f"/api/v1/namespaces/{ns}/pods/shop-1")
    rs_json = raw(cluster, "GET", f"/apis/apps/v1/namespaces/{ns}/replicasets/shop-rs")

    r = make(cluster.kubeconfig_path)  # handlers only: never started
    try:
        r._pod_event("ADDED", pod_json)
        assert r.by_ip(ip("10.244.11.1")) == endpoint(ns, "shop-1", "ReplicaSet", "shop-rs")
        r._parent_event("ReplicaSet", "ADDED", rs_json)
        assert r.by_ip(ip("10.244.11.1")) == endpoint(ns, "shop-1", "Deployment", "shop")
        r._parent_event("ReplicaSet", "DELETED", rs_json)
        assert r.by_ip(ip("10.244.11.1")) == endpoint(ns, "shop-1", "ReplicaSet", "shop-rs")
    finally:
        r.stop()


# --- 2. IP reuse ---------------------------------------------------------------------


def test_reused_ip_answers_for_the_new_pod(cluster: KubeCluster) -> None:
    ns = namespace(cluster, "t2-reuse")
    with running(cluster.kubeconfig_path) as r:
        # Finished first, then reused: a Succeeded pod gives its address back.
        cluster.create_pod("batch-old", ns, NODE, "10.244.2.1")
        resolves(r, "10.244.2.1", endpoint(ns, "batch-old", "Pod", "batch-old"))
        cluster.set_pod_status("batch-old", ns, {"phase": "Succeeded"})
        resolves(r, "10.244.2.1", None)
        cluster.create_pod("batch-new", ns, NODE, "10.244.2.1")
        resolves(r, "10.244.2.1", endpoint(ns, "batch-new", "Pod", "batch-new"))

        # Reused while the old pod still looks alive (its delete not seen yet): the newest
        # claim answers, and keeps answering once the old pod goes.
        cluster.create_pod("api-old", ns, NODE, "10.244.2.2")
        resolves(r, "10.244.2.2", endpoint(ns, "api-old", "Pod", "api-old"))
        cluster.create_pod("api-new", ns, NODE, "10.244.2.2")
        resolves(r, "10.244.2.2", endpoint(ns, "api-new", "Pod", "api-new"))
        cluster.set_pod_status("api-old", ns, {"phase": "Failed"})
        cluster.delete_pod("api-old", ns)
        cluster.create_pod("marker", ns, NODE, "10.244.2.3")  # after the delete, in order
        resolves(r, "10.244.2.3", endpoint(ns, "marker", "Pod", "marker"))
        assert r.by_ip(ip("10.244.2.2")) == endpoint(ns, "api-new", "Pod", "api-new")
        assert r.by_ip(ip("10.244.2.1")) == endpoint(ns, "batch-new", "Pod", "batch-new")


# --- 3. scope ------------------------------------------------------------------------


def test_scope_node_ignores_other_nodes_and_cluster_sees_pods_and_services(
    cluster: KubeCluster, api: Any
) -> None:
    ns = namespace(cluster, "t3-scope")
    svc = client.CoreV1Api(api).create_namespaced_service(
        ns, {"metadata": {"name": "checkout"}, "spec": {"ports": [{"port": 80}]}}
    )
    svc_ip = svc.spec.cluster_ip
    assert ip(svc_ip) in ipaddress.ip_network(cluster.service_cidr)
    cluster.create_pod("remote", ns, "node-b", "10.244.3.1")
    cluster.create_pod("local", ns, NODE, "10.244.3.2")

    with running(cluster.kubeconfig_path, scope="node") as r:
        assert not r.cluster_scope and "services" not in r.resources
        resolves(r, "10.244.3.2", endpoint(ns, "local", "Pod", "local"))
        cluster.create_pod("remote-2", ns, "node-b", "10.244.3.3")
        cluster.create_pod("local-2", ns, NODE, "10.244.3.4")  # after remote-2, in order
        resolves(r, "10.244.3.4", endpoint(ns, "local-2", "Pod", "local-2"))
        assert r.by_ip(ip("10.244.3.1")) is None
        assert r.by_ip(ip("10.244.3.3")) is None
        assert r.by_ip(ip(svc_ip)) is None

    with running(cluster.kubeconfig_path, scope="cluster") as r:
        assert r.cluster_scope
        resolves(r, "10.244.3.1", endpoint(ns, "remote", "Pod", "remote"))
        assert r.by_ip(ip("10.244.3.3")) == endpoint(ns, "remote-2", "Pod", "remote-2")
        assert r.by_ip(ip(svc_ip)) == Endpoint(ns, "checkout", "Service", "checkout")
        kubernetes_svc = Endpoint("default", "kubernetes", "Service", "kubernetes")
        assert r.by_ip(ip(cluster.kubernetes_service_ip)) == kubernetes_svc
        services = client.CoreV1Api(api).list_service_for_all_namespaces().items
        with_ip = sum(1 for s in services if s.spec.cluster_ip not in (None, "", "None"))
        wait_for(
            lambda: r.size() == claiming_pods(api, node=None) + with_ip,
            timeout=10,
            what="index size == all pods with an IP + services with a ClusterIP",
        )
        # (raw: 1.20 answers a Service delete with a Status the 37.x client cannot parse)
        raw(cluster, "DELETE", f"/api/v1/namespaces/{ns}/services/checkout")
        resolves(r, svc_ip, None)

    # scope "auto" follows [packetparser].remote_context.
    for remote in (False, True):
        r = make(cluster.kubeconfig_path, scope="auto", remote=remote)
        r.stop()  # never started: closes its client
        assert r.cluster_scope is remote


# --- 4. host network -----------------------------------------------------------------


def test_host_network_pod_claims_nothing(cluster: KubeCluster) -> None:
    ns = namespace(cluster, "t4-hostnet")
    node_ip = "192.0.2.44"
    with running(cluster.kubeconfig_path) as r:
        cluster.create_pod("kube-proxy-x", ns, NODE, node_ip, host_network=True)
        cluster.create_pod("marker", ns, NODE, "10.244.4.1")  # after, in order
        resolves(r, "10.244.4.1", endpoint(ns, "marker", "Pod", "marker"))
        assert r.by_ip(ip(node_ip)) is None


# --- 5. deletion ---------------------------------------------------------------------


def test_deleted_pod_is_forgotten_within_two_seconds(cluster: KubeCluster) -> None:
    ns = namespace(cluster, "t5-delete")
    with running(cluster.kubeconfig_path) as r:
        cluster.create_pod("short", ns, NODE, ["10.244.5.1", "fd00:5::1"])
        resolves(r, "10.244.5.1", endpoint(ns, "short", "Pod", "short"))
        cluster.delete_pod("short", ns, wait=False)
        resolves(r, "10.244.5.1", None, timeout=20)  # from the watch event, not a relist
        assert r.by_ip(ip("fd00:5::1")) is None


def test_watch_renewal_resumes_without_losing_events(
    cluster: KubeCluster, caplog: pytest.LogCaptureFixture
) -> None:
    """The server ends each watch after timeoutSeconds; the next one resumes from the last
    resourceVersion in the same session, with no relist and no warning."""
    ns = namespace(cluster, "t5-renew")
    with running(cluster.kubeconfig_path) as r:
        pods = r.resources["pods"]
        watches = pods.watches
        wait_for(lambda: pods.watches > watches, timeout=WATCH_TIMEOUT + 5, what="renewal")
        cluster.create_pod("x", ns, NODE, "10.244.12.1")
        resolves(r, "10.244.12.1", endpoint(ns, "x", "Pod", "x"))
        cluster.delete_pod("x", ns)
        resolves(r, "10.244.12.1", None)
        assert (pods.follower.sessions, pods.lists, pods.relists) == (1, 1, 0)
    assert not [rec for rec in caplog.records if rec.levelno >= logging.WARNING]


# --- 6. apiserver restart ------------------------------------------------------------


def test_apiserver_restart_is_followed_through(cluster: KubeCluster) -> None:
    ns = namespace(cluster, "t6-restart")
    cluster.create_pod("before", ns, NODE, "10.244.6.1")
    with running(cluster.kubeconfig_path) as r:
        resolves(r, "10.244.6.1", endpoint(ns, "before", "Pod", "before"))
        pods = r.resources["pods"]
        sessions = pods.follower.sessions
        samples: list[bool] = []
        done = threading.Event()

        def sample() -> None:  # records up as it changes; not a synchronisation
            while not done.is_set():
                samples.append(r.up)
                done.wait(0.01)

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            cluster.restart_apiserver()
            cluster.create_pod("after", ns, NODE, "10.244.6.2")
            resolves(r, "10.244.6.2", endpoint(ns, "after", "Pod", "after"), timeout=15)
            wait_for(lambda: r.up, timeout=15, what="resolver up again")
        finally:
            done.set()
            sampler.join()
        assert samples[0] is True and False in samples and r.up
        assert pods.follower.sessions > sessions  # reconnected ...
        assert (pods.lists, pods.relists) == (1, 0)  # ... resuming from its resourceVersion
        assert r.by_ip(ip("10.244.6.1")) == endpoint(ns, "before", "Pod", "before")


# --- 7. resume after a cut, and 410 Gone after a compaction -------------------------


def test_cut_then_compaction_relists(
    cluster: KubeCluster, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ns = namespace(cluster, "t7-gone")
    cluster.create_pod("a", ns, NODE, "10.244.7.1")
    cluster.create_pod("b", ns, NODE, "10.244.7.2")
    caplog.set_level(logging.INFO, logger="retinad.test.kubernetes")
    with (
        FaultProxy(cluster.apiserver_port) as proxy,
        running(proxied_kubeconfig(cluster, proxy, tmp_path / "kubeconfig")) as r,
    ):
        pods = r.resources["pods"]
        resolves(r, "10.244.7.2", endpoint(ns, "b", "Pod", "b"))

        # A cut without compaction: the watch resumes and replays the delete; no relist.
        proxy.block()
        wait_for(lambda: not r.up, timeout=10, what="resolver down")
        cluster.delete_pod("a", ns)
        proxy.unblock()
        resolves(r, "10.244.7.1", None)
        wait_for(lambda: r.up, timeout=10, what="resolver up")
        assert (pods.lists, pods.relists) == (1, 0)

        # A cut across a compaction: resuming gets 410 Gone, the relist replaces the index.
        proxy.block()
        wait_for(lambda: not r.up, timeout=10, what="resolver down")
        cluster.delete_pod("b", ns)
        cluster.create_pod("c", ns, NODE, "10.244.7.3")
        cluster.compact_etcd()
        proxy.unblock()
        resolves(r, "10.244.7.3", endpoint(ns, "c", "Pod", "c"))
        assert r.by_ip(ip("10.244.7.2")) is None
        wait_for(lambda: r.up, timeout=10, what="resolver up")
        assert (pods.lists, pods.relists) == (2, 1)
        # Every resource resumed across the compaction, so every one relisted.
        assert {n: f.relists for n, f in r.resources.items()} == dict.fromkeys(r.resources, 1)
        assert r.alive

    gone = [rec for rec in caplog.records if "410 Gone" in rec.getMessage()]
    assert {rec.levelno for rec in gone} == {logging.INFO}  # handled, never a failure
    assert not [rec for rec in caplog.records if rec.levelno >= logging.ERROR]


# --- 8. configuration errors ----------------------------------------------------------


def test_kubeconfig_errors_name_the_key_and_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "nope" / "kubeconfig"
    with pytest.raises(ConfigError) as err:
        make(missing)
    assert str(err.value) == (
        f"[resolvers.kubernetes].kubeconfig: cannot read {missing}: No such file or directory"
    )

    garbage = tmp_path / "garbage"
    garbage.write_text("clusters: 7\n")
    with pytest.raises(ConfigError) as err:
        make(garbage)
    assert str(err.value).startswith(
        f"[resolvers.kubernetes].kubeconfig: {garbage} is not a usable kubeconfig: "
    )

    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_PORT", raising=False)
    with pytest.raises(ConfigError) as err:
        make("")
    assert str(err.value).startswith(
        '[resolvers.kubernetes].kubeconfig is "" (use the pod\'s service account), '
        "but no in-cluster configuration is available"
    )


# --- 9. API server addresses ---------------------------------------------------------


def test_apiserver_addresses_come_from_the_kubernetes_endpoints(
    cluster: KubeCluster, api: Any
) -> None:
    def from_api() -> list[tuple[Any, int]]:
        ep = client.CoreV1Api(api).read_namespaced_endpoints("kubernetes", "default")
        return [
            (ip(a.ip), p.port)
            for s in ep.subsets or []
            for a in s.addresses or []
            for p in s.ports or []
        ]

    expected = wait_for(from_api, timeout=10, what="kubernetes Endpoints")
    assert expected == [(ip(cluster.advertise_address), cluster.apiserver_port)]
    with running(cluster.kubeconfig_path) as r:
        wait_for(r.apiserver_addresses, timeout=10, what="apiserver addresses")
        assert r.apiserver_addresses() == expected


# --- start with the API down; stop promptly ------------------------------------------


def test_start_does_not_wait_for_an_absent_api_server(cluster: KubeCluster, tmp_path: Path) -> None:
    ns = namespace(cluster, "t10-late")
    cluster.create_pod("early", ns, NODE, "10.244.10.1")
    with FaultProxy(cluster.apiserver_port) as proxy:
        proxy.block()
        started = time.monotonic()
        with running(proxied_kubeconfig(cluster, proxy, tmp_path / "kc"), wait_up=False) as r:
            assert time.monotonic() - started < 3.0  # not the connect retries' 10 s
            wait_for(lambda: proxy.refused >= 3, timeout=10, what="connection attempts")
            assert not r.up and r.alive and r.size() == 0
            proxy.unblock()
            assert r.wait_up(10)
            resolves(r, "10.244.10.1", endpoint(ns, "early", "Pod", "early"))
    assert STOP_SECONDS and max(STOP_SECONDS) < 1.0


# --- workload rules that the cluster tests cannot stage -------------------------------


def _pod(owner_kind: str, owner_name: str, **labels: str) -> kw.PodRecord:
    ref = kw.OwnerRef(owner_kind, owner_name, "uid-1")
    return kw.PodRecord("p", "ns", "pod-1", ref, frozenset(), labels)


@pytest.mark.parametrize(
    ("pod", "parents", "want"),
    [
        # A ReplicaSet not known yet: <deployment>-<pod-template-hash> names the Deployment.
        (
            _pod("ReplicaSet", "cart-6f7d9", **{"pod-template-hash": "6f7d9"}),
            {},
            ("Deployment", "cart"),
        ),
        (
            _pod("ReplicaSet", "cart-6f7d9", **{"pod-template-hash": "other"}),
            {},
            ("ReplicaSet", "cart-6f7d9"),
        ),
        (_pod("ReplicaSet", "cart-6f7d9"), {}, ("ReplicaSet", "cart-6f7d9")),
        # Known: its owner reference decides, whatever the name looks like.
        (
            _pod("ReplicaSet", "cart-6f7d9", **{"pod-template-hash": "6f7d9"}),
            {"ReplicaSet": {"uid-1": None}},
            ("ReplicaSet", "cart-6f7d9"),
        ),
        (_pod("ReplicaSet", "x"), {"ReplicaSet": {"uid-1": "web"}}, ("Deployment", "web")),
        (_pod("Job", "nightly-1"), {}, ("Job", "nightly-1")),
        (_pod("Job", "nightly-1"), {"Job": {"uid-1": "nightly"}}, ("CronJob", "nightly")),
        (_pod("DaemonSet", "agent"), {}, ("DaemonSet", "agent")),
        (_pod("Node", "node-a"), {}, ("Pod", "pod-1")),  # a static pod's mirror
    ],
)
def test_workload_rules(pod: kw.PodRecord, parents: kw.Parents, want: tuple[str, str]) -> None:
    assert kw.workload(pod, parents) == want


def test_finished_and_host_network_pods_claim_no_address() -> None:
    base: dict[str, Any] = {
        "metadata": {"uid": "u", "namespace": "n", "name": "p"},
        "spec": {},
        "status": {
            "phase": "Running",
            "podIP": "10.1.1.1",
            "podIPs": [{"ip": "10.1.1.1"}, {"ip": "fd00::1"}],
        },
    }
    rec = kw.parse_pod(base)
    assert rec is not None and rec.ips == {ip("10.1.1.1"), ip("fd00::1")}
    for phase in ("Succeeded", "Failed"):
        rec = kw.parse_pod({**base, "status": {**base["status"], "phase": phase}})
        assert rec is not None and rec.ips == frozenset()
    rec = kw.parse_pod({**base, "spec": {"hostNetwork": True}})
    assert rec is not None and rec.ips == frozenset()
