"""resolvers/kube_http.py against a real kube-apiserver: the kubernetes resolver lists and
watches without the client's generated API classes (21.6 MiB for CoreV1Api alone), and an
error status still arrives as the client's ApiException.

The resolver runs in a fresh interpreter: this test process imports the generated classes
itself (tests/kube_cluster.py's helpers use them).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kube_cluster import KubeCluster, apiserver_binary_path, ensure_built

NODE = "kube-http-node"
REPO = Path(__file__).resolve().parents[2]

RESOLVE = """
import json, logging, sys, threading
from retinad.config.schema import KubernetesResolverSettings, ResolverSettings, Settings
from retinad.resolvers import kubernetes as kube
from retinad.resolvers.base import ResolverContext
settings = Settings(resolvers=ResolverSettings(order=["kubernetes"],
    kubernetes=KubernetesResolverSettings(kubeconfig=sys.argv[1], node_name=sys.argv[2],
                                          scope="cluster")))
r = kube.create(ResolverContext(settings, logging.getLogger("t"), threading.Event().set))
r.start()
try:
    up = r.wait_up(30)
    import ipaddress
    ep = r.by_ip(ipaddress.ip_address(sys.argv[3]))
    generated = sorted(m for m in sys.modules if m.startswith("kubernetes.client.api."))
    print(json.dumps({"up": up, "name": ep.name if ep else None,
                      "namespace": ep.namespace if ep else None, "generated": generated}))
finally:
    r.stop()
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeCluster]:
    built = apiserver_binary_path()
    binary = built if os.access(built, os.X_OK) else ensure_built()
    with KubeCluster(tmp_path_factory.mktemp("kube"), apiserver_binary=binary) as c:
        yield c


def test_the_resolver_names_a_pod_without_importing_generated_api_classes(
    cluster: KubeCluster,
) -> None:
    cluster.create_namespace("kube-http")
    cluster.create_pod("web-1", "kube-http", NODE, "10.244.7.9")
    out = subprocess.run(
        [sys.executable, "-c", RESOLVE, str(cluster.kubeconfig_path), NODE, "10.244.7.9"],
        capture_output=True, text=True, timeout=120, cwd=REPO, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result == {"up": True, "name": "web-1", "namespace": "kube-http", "generated": []}


def test_an_error_status_is_the_clients_api_exception(cluster: KubeCluster, tmp_path: Path) -> None:
    from kubernetes.client.exceptions import ApiException

    from retinad.resolvers import kube_http
    from retinad.resolvers.kubernetes import load_api_client

    bad = cluster.write_kubeconfig(tmp_path / "bad", token="not-a-token")
    api = load_api_client(str(bad))
    with pytest.raises(ApiException) as err:
        kube_http.lister(api, "/api/v1/pods")(limit=1)
    assert err.value.status == 401
    assert json.loads(err.value.body)["reason"] == "Unauthorized"

    good = load_api_client(str(cluster.kubeconfig_path))
    resp = kube_http.lister(good, "/api/v1/namespaces/default/endpoints",
                            field_selector="metadata.name=kubernetes")(limit=1)  # fmt: skip
    try:
        body = json.loads(resp.read())
    finally:
        resp.release_conn()
    assert [i["metadata"]["name"] for i in body["items"]] == ["kubernetes"]
