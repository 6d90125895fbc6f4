"""The package tier: build the deb and rpm, then install them into a real systemd.

Slow (packages, images, boots), so it is collected only when RETINAD_PACKAGE_TESTS=1, which
`make test-package` sets; plain `make test` leaves it out. Every test here is marked
``package``. The packages are built once per session (release 1, then release 2 from the
same staged tree for the upgrade), the images by scripts/build-systemd-image.sh (cached).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.docker_engine import engine_session
from tests.package.systemd_box import run

ROOT = Path(__file__).resolve().parents[2]
BCC_IMAGE = "retinad-test/debian-systemd-bcc:bookworm"

if os.environ.get("RETINAD_PACKAGE_TESTS") != "1":
    collect_ignore_glob = ["test_*.py"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).parent == Path(__file__).parent:
            item.add_marker(pytest.mark.package)
            # The first test pays for the session's package builds and image (minutes).
            item.add_marker(pytest.mark.timeout(900))


@dataclass(frozen=True)
class Packages:
    version: str
    deb: Path
    rpm: Path
    deb_next: Path
    """The same code as release 2: what an upgrade installs."""
    rpm_next: Path


@pytest.fixture(scope="session")
def packages(tmp_path_factory: pytest.TempPathFactory) -> Packages:
    out = tmp_path_factory.mktemp("dist")
    version = run(["/usr/bin/python3", str(ROOT / "packaging/changelog.py"), "version"]).strip()
    build = str(ROOT / "packaging/build.sh")
    run(["bash", build, str(out / "r1")], timeout=900, env={**os.environ, "RETINAD_RELEASE": "1"})
    run(
        ["bash", build, str(out / "r2")],
        timeout=300,
        env={**os.environ, "RETINAD_RELEASE": "2", "RETINAD_PKG_REUSE_STAGE": "1"},
    )
    return Packages(
        version=version,
        deb=out / "r1" / f"retinad_{version}-1_all.deb",
        rpm=out / "r1" / f"retinad-{version}-1.noarch.rpm",
        deb_next=out / "r2" / f"retinad_{version}-2_all.deb",
        rpm_next=out / "r2" / f"retinad-{version}-2.noarch.rpm",
    )


@pytest.fixture(scope="session")
def image_cache() -> Iterator[Path]:
    """The cache dir of scripts/build-systemd-image.sh (images tagged, rootfs-bcc/ inside),
    with a dockerd (the running one, or one this session starts and stops)."""
    with engine_session():
        out = subprocess.run(
            ["bash", str(ROOT / "scripts/build-systemd-image.sh")],
            capture_output=True,
            text=True,
            timeout=1200,
            check=False,
        )
        assert out.returncode == 0, out.stderr
        yield Path(out.stdout.strip().splitlines()[-1])
