"""End-to-end proof that the KubeCluster fixture behaves like a real cluster for a resolver."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

from tests.daemon_proc import wait_for
from tests.kube_cluster import KubeCluster


def _kubernetes_endpoints(v1: Any) -> list[str] | None:
    """The ``default/kubernetes`` Endpoints' addresses, once the bootstrap controller wrote them."""
    try:
        ep = v1.read_namespaced_endpoints("kubernetes", "default")
    except ApiException as e:
        if e.status == 404:
            return None
        raise
    return [a.ip for s in ep.subsets or [] for a in s.addresses or []] or None


def _kubernetes_service(v1: Any) -> Any:
    """The ``default/kubernetes`` Service, or None until the bootstrap controller made it."""
    try:
        return v1.read_namespaced_service("kubernetes", "default")
    except ApiException as e:
        if e.status == 404:
            return None
        raise


def test_cluster_end_to_end(kube_cluster: KubeCluster) -> None:
    cluster = kube_cluster
    with cluster.api_client() as api:
        v1 = client.CoreV1Api(api)

        # The apiserver's bootstrap controller creates default/kubernetes shortly after
        # /readyz answers: wait for it rather than read it once.
        svc = wait_for(lambda: _kubernetes_service(v1), timeout=30, what="kubernetes Service")
        assert svc.spec.cluster_ip == cluster.kubernetes_service_ip
        addrs = wait_for(lambda: _kubernetes_endpoints(v1), timeout=10, what="kubernetes Endpoints")
        assert addrs == [cluster.advertise_address]

        cluster.create_namespace("smoke", labels={"team": "net"})
        owner = {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "name": "web-5d8f",
            "uid": "7a3c2d4e-0000-4000-8000-000000000001",
            "controller": True,
        }
        pod = cluster.create_pod(
            "web-1", "smoke", "node-a", "10.244.1.5", owner_refs=[owner], labels={"app": "web"}
        )
        assert pod.status.pod_ip == "10.244.1.5"
        assert pod.status.phase == "Running"
        assert pod.metadata.owner_references[0].name == "web-5d8f"
        cluster.create_pod("other", "smoke", "node-b", "10.244.2.7")

        on_a = v1.list_pod_for_all_namespaces(field_selector="spec.nodeName=node-a")
        assert [(p.metadata.name, p.status.pod_ip) for p in on_a.items] == [("web-1", "10.244.1.5")]
        old_rv = on_a.metadata.resource_version

        # A watch from the list's resourceVersion replays what happened since.
        cluster.create_pod("web-2", "smoke", "node-a", "10.244.1.6")
        seen: list[tuple[str, str, str | None]] = []
        w = watch.Watch()
        for ev in w.stream(
            v1.list_namespaced_pod,
            "smoke",
            field_selector="spec.nodeName=node-a",
            resource_version=old_rv,
            timeout_seconds=10,
        ):
            seen.append((ev["type"], ev["object"].metadata.name, ev["object"].status.pod_ip))
            if seen[-1] == ("MODIFIED", "web-2", "10.244.1.6"):
                w.stop()
        assert seen == [("ADDED", "web-2", None), ("MODIFIED", "web-2", "10.244.1.6")]

        # After a compaction the old resourceVersion is gone. On the wire the
        # apiserver answers the watch with HTTP 200 and one ERROR event carrying a
        # 410 "Expired" Status, then ends the stream...
        cluster.compact_etcd()
        resp = v1.list_namespaced_pod(
            "smoke", watch=True, resource_version=old_rv, timeout_seconds=10, _preload_content=False
        )
        try:
            assert resp.status == 200
            events = [json.loads(line) for line in resp.data.splitlines()]
        finally:
            resp.release_conn()
        assert [(e["type"], e["object"]["code"], e["object"]["reason"]) for e in events] == [
            ("ERROR", 410, "Expired")
        ]
        # ...which the client's Watch.stream raises as ApiException(status=410)
        # (without timeout_seconds it first retries once from the same version).
        with pytest.raises(ApiException) as gone:
            for _ in watch.Watch().stream(
                v1.list_namespaced_pod, "smoke", resource_version=old_rv, timeout_seconds=10
            ):
                pass
        assert gone.value.status == 410

        cluster.delete_pod("other", "smoke")

        cluster.restart_apiserver()
        # The kubeconfig (token + CA) is what a daemon under test would be given.
        with config.new_client_from_config(config_file=str(cluster.kubeconfig_path)) as kapi:
            assert client.CoreV1Api(kapi).read_namespace("smoke").metadata.labels["team"] == "net"
        names = sorted(p.metadata.name for p in v1.list_namespaced_pod("smoke").items)
        assert names == ["web-1", "web-2"]
