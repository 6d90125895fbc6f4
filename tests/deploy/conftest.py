"""A real kube-apiserver with RBAC on (per module), the suite's dockerd, and retinad's
image built once per session from this checkout (scripts/build-image.sh)."""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.docker_engine import DockerEngine, engine_session
from tests.kube_cluster import KubeCluster, apiserver_binary_path, ensure_built

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD = REPO_ROOT / "scripts" / "build-image.sh"
#: Per checkout: sessions sharing one dockerd (worktrees of the same repository) must not
#: replace each other's image between its build and its use.
IMAGE = "retinad-test/retinad:suite-" + hashlib.sha1(str(REPO_ROOT).encode()).hexdigest()[:8]


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


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[DockerEngine]:
    with engine_session() as engine:
        yield engine


@pytest.fixture(scope="session")
def retinad_image(docker_engine: DockerEngine) -> str:
    """The image of this checkout: the deb packaging/build.sh makes of it, installed on
    the base rootfs (cached per machine); or $RETINAD_TEST_IMAGE, already built. Building
    the deb fetches from PyPI what pip's cache (under $HOME) does not hold yet."""
    prebuilt = os.environ.get("RETINAD_TEST_IMAGE")
    if prebuilt:  # built by scripts/build-image.sh beforehand (make test-kube does)
        return prebuilt
    env = {
        "RETINAD_IMAGE": IMAGE,
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": os.environ.get("HOME", "/root"),
    }
    proc = subprocess.run(
        ["bash", str(BUILD)],
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.strip().splitlines()[-1] == IMAGE
    return IMAGE
