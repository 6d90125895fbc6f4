"""deploy/kubernetes/ run by a real kubelet (tests/kube_node.py), end to end.

The kustomization is applied as an operator would; the controller-manager's DaemonSet
controller makes retinad's pod, the test binds it to the node (there is no scheduler),
and the kubelet runs it under containerd with the manifest's capabilities, volumes,
service-account token and probes. Then:

* the pod goes Ready through its readiness probe on /-/ready (the kubelet's own probe);
* a Deployment's pods (pause containers on the bridge CNI) exchange UDP, and retinad,
  in Kubernetes mode from inside its pod, counts it exactly under each pod's namespace,
  name and owning Deployment, with no 403 in its log;
* the headless Service's Endpoints (filled by the Endpoints controller from the Ready
  pod) lead a scraper, as a ServiceMonitor would, to /metrics;
* retinad's resident memory, idle and while following the pods, stays under the
  DaemonSet's limit, and the kubelet applied that limit to the pod's cgroup.

What the test changes in the manifests, and why (nothing else): the image tag (the one
built from this checkout, imported into containerd; ``imagePullPolicy: Never``), the
port (a free one: other jobs share this host's network), the listen address (the node's
address, which the kubelet probes), and ``KUBERNETES_SERVICE_HOST/PORT`` (no kube-proxy
runs, so the ``kubernetes`` ClusterIP does not route; with hostNetwork the API server
is on the node's loopback).
"""

from __future__ import annotations

import copy
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.daemon_proc import http_get, wait_for
from tests.deploy import manifests as m
from tests.kube_cluster import KubeCluster, free_port
from tests.kube_node import KubeNode, pod_ready

UDP4 = 14 + 20 + 8
PKTS = "retinad_endpoint_forward_packets_total"
BYTES = "retinad_endpoint_forward_bytes_total"
SENDER = """
import socket, sys
dst, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(n):
    s.sendto(b"k" * size, (dst, 9))
"""
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def for_this_node(docs: list[m.Doc], node: KubeNode, port: int, image: str) -> list[m.Doc]:
    """The kustomization's objects with the module docstring's four changes."""
    out = copy.deepcopy(docs)
    cm = m.find(out, "ConfigMap", "retinad")
    toml = cm["data"]["retinad.toml"]
    assert 'listen_address = [":10095"]' in toml
    cm["data"]["retinad.toml"] = toml.replace(
        'listen_address = [":10095"]', f'listen_address = ["{node.node_ip}:{port}"]'
    )
    ds = m.find(out, "DaemonSet", "retinad")
    (c,) = ds["spec"]["template"]["spec"]["containers"]
    c["image"] = image
    c["imagePullPolicy"] = "Never"
    (p,) = c["ports"]
    p["containerPort"] = port
    c["env"] = [
        *c.get("env", []),
        {"name": "KUBERNETES_SERVICE_HOST", "value": "127.0.0.1"},
        {"name": "KUBERNETES_SERVICE_PORT", "value": str(node.cluster.apiserver_port)},
    ]
    svc = m.find(out, "Service", "retinad")
    (sp,) = svc["spec"]["ports"]
    sp["port"] = port
    return out


def scrape(url: str) -> Samples:
    from prometheus_client.parser import text_string_to_metric_families

    status, body = http_get(url)
    assert status == 200, (status, body[:500])
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for fam in text_string_to_metric_families(body)
        for s in fam.samples
    }


def value(samples: Samples, metric: str, labels: dict[str, str]) -> float:
    return samples.get((metric, frozenset(labels.items())), 0.0)


def memory_kib(pid: int) -> dict[str, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    return {
        k: int(v.split()[0])
        for k, v in (ln.split(":", 1) for ln in status.splitlines())
        if k in ("VmRSS", "VmHWM")
    }


def retinad_pid(node: KubeNode, uid: str) -> int:
    for pid in node.pod_pids(uid):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(part.endswith(b"/usr/bin/retinad") for part in cmdline):
            return pid
    raise AssertionError(f"no retinad process in pod {uid}")


class PeakRss(threading.Thread):
    """The highest ``total_rss`` of pod ``uid``'s memory cgroup, sampled every 50 ms from
    before its containers start: the daemon plus its short-lived compile children (bcc
    and clang), without the page cache that ``memory.max_usage_in_bytes`` also counts."""

    def __init__(self, uid: str) -> None:
        super().__init__(daemon=True)
        self.uid = uid
        self.peak = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        root = Path("/sys/fs/cgroup/memory/kubepods")
        stat: Path | None = None
        while not self._stop_event.wait(0.05):
            if stat is None:
                hits = list(root.glob(f"pod{self.uid}")) + list(root.glob(f"*/pod{self.uid}"))
                if not hits:
                    continue
                stat = hits[0] / "memory.stat"
            try:
                text = stat.read_text()
            except OSError:
                continue
            for line in text.splitlines():
                key, _, val = line.partition(" ")
                if key == "total_rss":
                    self.peak = max(self.peak, int(val))

    def stop(self) -> int:
        self._stop_event.set()
        self.join(5)
        return self.peak


def mebibytes(quantity: str) -> int:
    assert quantity.endswith("Mi"), quantity
    return int(quantity[:-2])


def pods_of(v1: Any, namespace: str, selector: str) -> list[Any]:
    return list(v1.list_namespaced_pod(namespace, label_selector=selector).items)


@pytest.mark.timeout(900)
def test_daemonset_on_a_real_kubelet_counts_pods_by_name(
    kube_node: KubeNode, node_cluster: KubeCluster, retinad_image: str
) -> None:
    node, cluster = kube_node, node_cluster
    port = free_port()
    docs = for_this_node(m.kustomized(), node, port, retinad_image)
    limit_mib = mebibytes(
        m.find(docs, "DaemonSet")["spec"]["template"]["spec"]["containers"][0]["resources"][
            "limits"
        ]["memory"]
    )
    with cluster.api_client() as api:
        v1, apps = client.CoreV1Api(api), client.AppsV1Api(api)
        applier = m.Applier(api)
        list(applier.apply_all(docs))

        # 1. The DaemonSet controller's pod, bound here, Ready by the kubelet's probe.
        samplers: list[PeakRss] = []

        def retinad_pod() -> Any:
            node.bind_pending("retinad")
            pods = pods_of(v1, "retinad", "app.kubernetes.io/name=retinad")
            if len(pods) == 1 and not samplers:
                samplers.append(PeakRss(pods[0].metadata.uid))
                samplers[0].start()
            return pods[0] if len(pods) == 1 and pod_ready(pods[0]) else None

        try:
            pod = wait_for(retinad_pod, timeout=300, what="retinad's DaemonSet pod Ready")
        except AssertionError:
            pods = pods_of(v1, "retinad", "app.kubernetes.io/name=retinad")
            raise AssertionError(
                f"pods: {[(p.metadata.name, p.status) for p in pods]}\n{node.logs()}"
                + "".join(
                    node.pod_log("retinad", p.metadata.name, p.metadata.uid, "retinad")
                    for p in pods
                )
            ) from None
        assert pod.spec.node_name == node.name
        assert pod.status.pod_ip == node.node_ip
        (owner,) = pod.metadata.owner_references
        assert (owner.kind, owner.name) == ("DaemonSet", "retinad")
        uid = pod.metadata.uid
        url = f"http://{node.node_ip}:{port}/metrics"
        idle = memory_kib(retinad_pid(node, uid))

        # 2. A Deployment's pods: the controller-manager makes its ReplicaSet and pods.
        cluster.create_namespace("shop")
        labels = {"app": "web"}
        apps.create_namespaced_deployment(
            "shop",
            {
                "metadata": {"name": "web"},
                "spec": {
                    "replicas": 3,
                    "selector": {"matchLabels": labels},
                    "template": {
                        "metadata": {"labels": labels},
                        "spec": {
                            "containers": [
                                {
                                    "name": "main",
                                    "image": node.pause_image,
                                    "imagePullPolicy": "Never",
                                }
                            ],
                            "terminationGracePeriodSeconds": 1,
                        },
                    },
                },
            },
        )

        def web_ready() -> list[Any] | None:
            node.bind_pending("shop")
            pods = pods_of(v1, "shop", "app=web")
            ok = len(pods) == 3 and all(pod_ready(p) and p.status.pod_ip for p in pods)
            return pods if ok else None

        web = wait_for(web_ready, timeout=180, what="web's three pods Ready with IPs")
        a, b = web[0], web[1]
        for p in web:
            (ref,) = p.metadata.owner_references
            assert ref.kind == "ReplicaSet"

        def ep(p: Any, direction: str) -> dict[str, str]:
            return {
                "direction": direction,
                "namespace": "shop",
                "name": p.metadata.name,
                "workload_kind": "Deployment",
                "workload_name": "web",
            }

        def send(src: Any, dst: Any, n: int, size: int) -> None:
            subprocess.run(
                [
                    "nsenter",
                    f"--net={node.netns_of(src.metadata.uid)}",
                    sys.executable,
                    "-c",
                    SENDER,
                    dst.status.pod_ip,
                    str(n),
                    str(size),
                ],
                check=True,
                capture_output=True,
                timeout=30,
            )

        # 3. Both veths attached and both pods named before the exact count starts.
        def named() -> bool:
            send(a, b, 1, 1)
            send(b, a, 1, 1)
            now = scrape(url)
            return value(now, PKTS, ep(a, "egress")) > 0 and value(now, PKTS, ep(b, "egress")) > 0

        try:
            wait_for(named, timeout=60, what="both pods' veths counted under their pod names")
        except AssertionError:
            _, body = http_get(url)
            shown = [ln for ln in body.splitlines() if "forward" in ln or "resolver" in ln]
            log = node.pod_log("retinad", pod.metadata.name, uid, "retinad")
            raise AssertionError(
                "not named; metrics:\n" + "\n".join(shown[:80]) + "\nlog:\n" + log[-6000:]
            ) from None
        keys = [
            (metric, who, d)
            for metric in (PKTS, BYTES)
            for who in (a, b)
            for d in ("ingress", "egress")
        ]

        def counts() -> dict[tuple[str, str, str], float]:
            now = scrape(url)
            return {(mt, w.metadata.name, d): value(now, mt, ep(w, d)) for mt, w, d in keys}

        before = counts()
        send(a, b, 7, 100)
        send(b, a, 3, 200)
        an, bn = a.metadata.name, b.metadata.name
        delta = {
            (PKTS, an, "egress"): 7,
            (BYTES, an, "egress"): 7 * (UDP4 + 100),
            (PKTS, bn, "ingress"): 7,
            (BYTES, bn, "ingress"): 7 * (UDP4 + 100),
            (PKTS, bn, "egress"): 3,
            (BYTES, bn, "egress"): 3 * (UDP4 + 200),
            (PKTS, an, "ingress"): 3,
            (BYTES, an, "ingress"): 3 * (UDP4 + 200),
        }
        want = {k: before[k] + delta[k] for k in before}
        try:
            wait_for(lambda: counts() == want, timeout=15, what="exact per-pod counts")
        except AssertionError:
            raise AssertionError(f"want {want}, got {counts()}") from None

        # 4. The scrape path a ServiceMonitor takes: the headless Service's Endpoints.
        def endpoints() -> Any:
            e = v1.read_namespaced_endpoints("retinad", "retinad")
            return e if e.subsets else None

        eps = wait_for(endpoints, timeout=60, what="retinad's Service Endpoints filled")
        (subset,) = eps.subsets
        (address,) = subset.addresses
        (eport,) = subset.ports
        assert (address.ip, address.target_ref.name, eport.name, eport.port) == (
            node.node_ip,
            pod.metadata.name,
            "metrics",
            port,
        )
        via_service = scrape(f"http://{address.ip}:{eport.port}/metrics")
        assert value(via_service, "retinad_resolver_up", {"resolver": "kubernetes"}) == 1

        # 5. Memory: idle, then following the pods, against the manifest's limit. The
        # pod's cgroup also holds the short-lived compile children (bcc and clang) and the
        # page cache of the kernel headers they read: its peak is what meets the limit.
        busy = memory_kib(retinad_pid(node, uid))
        start_peak = samplers[0].stop()
        cgroup = next(Path("/sys/fs/cgroup/memory/kubepods").rglob(f"pod{uid}"))
        limit_bytes = int((cgroup / "memory.limit_in_bytes").read_text())
        peak = int((cgroup / "memory.max_usage_in_bytes").read_text())
        stat = dict(
            (k, int(v))
            for k, v in (ln.split() for ln in (cgroup / "memory.stat").read_text().splitlines())
        )
        print(
            f"retinad in its pod: idle VmRSS {idle['VmRSS'] >> 10} MiB"
            f" (VmHWM {idle['VmHWM'] >> 10} MiB); following {len(web)} pods VmRSS"
            f" {busy['VmRSS'] >> 10} MiB (VmHWM {busy['VmHWM'] >> 10} MiB); pod cgroup now"
            f" rss {stat['total_rss'] >> 20} MiB cache {stat['total_cache'] >> 20} MiB, peak"
            f" usage {peak >> 20} MiB; peak rss (daemon + compile children, sampled)"
            f" {start_peak >> 20} MiB; limit {limit_mib} MiB"
        )
        assert limit_bytes == limit_mib * 1024 * 1024  # the kubelet applied the manifest's
        assert busy["VmHWM"] < limit_mib * 1024, (busy, limit_mib)
        assert peak < limit_bytes, (peak, limit_bytes)  # never pressed against the limit
        assert 0 < start_peak < limit_bytes, (start_peak, limit_bytes)
        assert stat["total_rss"] + stat.get("total_swap", 0) < limit_bytes

        log = node.pod_log("retinad", pod.metadata.name, uid, "retinad")
        assert "kubernetes-pods: index in sync" in log, log
        assert not re.search(r"\b403\b|Forbidden", log), log
        assert "Traceback" not in log, log
