"""The kubelet tier: deploy/kubernetes/ on a real one-node Kubernetes (tests/kube_node.py).

Slow (a kubelet, containerd, a controller-manager, retinad's image imported into
containerd: minutes), so it is collected only when RETINAD_KUBE_NODE_TESTS=1, which
`make test-kube` sets; plain `make test` leaves it out. The binaries come from
scripts/build-kubelet.sh (cached; `make test-kube` runs it first).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kube_cluster import KubeCluster, apiserver_binary_path, ensure_built
from tests.kube_node import KubeNode

if os.environ.get("RETINAD_KUBE_NODE_TESTS") != "1":
    collect_ignore_glob = ["test_*.py"]


@pytest.fixture(scope="module")
def node_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeCluster]:
    """etcd + kube-apiserver with RBAC and the ServiceAccount admission plugin on (the
    node's controller-manager makes the accounts' tokens, as on a real cluster)."""
    built = apiserver_binary_path()
    binary = built if os.access(built, os.X_OK) else ensure_built()
    workdir = tmp_path_factory.mktemp("kube-node-api")
    with KubeCluster(
        workdir,
        apiserver_binary=binary,
        rbac=True,
        service_account_admission=True,
        ready_timeout=120,
    ) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def kube_node(
    node_cluster: KubeCluster, retinad_image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[KubeNode]:
    workdir: Path = tmp_path_factory.mktemp("kube-node")
    with KubeNode(node_cluster, workdir, images=[retinad_image]) as node:
        yield node
