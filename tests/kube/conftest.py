"""Fixtures for tests against a real kube-apiserver (see tests/kube_cluster.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kube_cluster import KubeCluster, ensure_built


@pytest.fixture(scope="session")
def kube_apiserver_binary() -> Path:
    """The cached kube-apiserver; builds it if missing (minutes: better done before pytest)."""
    return ensure_built()


@pytest.fixture
def kube_cluster(tmp_path: Path, kube_apiserver_binary: Path) -> Iterator[KubeCluster]:
    """A fresh etcd + kube-apiserver per test, stopped even when the test fails."""
    with KubeCluster(tmp_path / "kube", apiserver_binary=kube_apiserver_binary) as cluster:
        yield cluster
