"""A real kube-apiserver with RBAC on, shared by the deploy tests of one module."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from tests.kube_cluster import KubeCluster, apiserver_binary_path, ensure_built


@pytest.fixture(scope="module")
def rbac_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeCluster]:
    built = apiserver_binary_path()
    binary = built if os.access(built, os.X_OK) else ensure_built()
    # RBAC's bootstrap-roles hook makes start-up slower; a loaded CI machine needs room.
    workdir = tmp_path_factory.mktemp("kube-rbac")
    with KubeCluster(workdir, apiserver_binary=binary, rbac=True, ready_timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def admin_api(rbac_cluster: KubeCluster) -> Iterator[Any]:
    """The test's own client: ``system:masters``, allowed everything under RBAC too."""
    with rbac_cluster.api_client() as api:
        yield api
