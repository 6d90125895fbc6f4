"""The rpm's metadata, an install/upgrade/erase into a scratch root, and lintian on the deb.

No rpm-based distribution can be booted here (no Fedora/EL mirror), so the rpm's
dependencies are checked as metadata (`rpm -qpR`) and its files and scriptlets by
installing it with `rpm --root --nodeps` into a scratch root with busybox as /bin/sh.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.package.conftest import ROOT, Packages
from tests.package.systemd_box import run

RPM_DEPENDS = {
    "python3 >= 3.11",
    "python3-bcc",
    "python3-grpcio",
    "python3-bcrypt",
    "python3-pyyaml",
}
CONFIGS = {"/etc/default/retinad", "/etc/retinad/retinad.toml"}


def rpmq(*args: str) -> str:
    return run(["rpm", *args])


def test_rpm_metadata(packages: Packages) -> None:
    rpm = str(packages.rpm)
    fmt = "%{NAME} %{VERSION} %{RELEASE} %{ARCH} %{LICENSE}"
    assert rpmq("-qp", "--qf", fmt, rpm) == f"retinad {packages.version} 1 noarch MIT"
    requires = {line.strip() for line in rpmq("-qpR", rpm).splitlines()}
    assert requires >= RPM_DEPENDS, requires
    assert not {r for r in requires if "bpfcc" in r or r.startswith("python3-yaml")}
    assert set(rpmq("-qpc", rpm).split()) == CONFIGS
    files = set(rpmq("-qpl", rpm).split())
    assert {
        "/usr/bin/retinad",
        "/usr/lib/systemd/system/retinad.service",
        "/usr/share/retinad/bpf/packetparser.c",
        "/usr/share/retinad/bpf/retinad.h",
        "/usr/lib/retinad/retinad/__init__.py",
        "/usr/lib/retinad/google/protobuf/__init__.py",
        "/usr/share/licenses/retinad/LICENSE",
    } <= files
    assert not [f for f in files if f.endswith(".so") or "__pycache__" in f or f.endswith(".pyc")]
    # The compiled dependencies are the distribution's, never vendored.
    assert not [
        f for f in files if f.startswith(("/usr/lib/retinad/grpc/", "/usr/lib/retinad/yaml/"))
    ]
    changelog = rpmq("-qp", "--changelog", rpm)
    first = next(
        line[2:] for line in (ROOT / "CHANGELOG.md").read_text().splitlines() if line[:2] == "- "
    )
    assert first in changelog
    scripts = rpmq("-qp", "--scripts", rpm)
    assert "systemctl enable --now retinad.service" in scripts
    assert "systemctl try-restart retinad.service" in scripts


def test_rpm_installs_upgrades_and_erases_in_a_scratch_root(
    packages: Packages, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    (root / "bin").mkdir(parents=True)
    shutil.copy("/bin/busybox", root / "bin" / "busybox")
    (root / "bin" / "sh").symlink_to("busybox")
    db = ["--root", str(root), "--dbpath", "/var/lib/rpm"]
    run(["rpm", *db, "--initdb"])
    run(["rpm", *db, "-ivh", "--nodeps", str(packages.rpm)])
    run(["rpm", *db, "-V", "--nodeps", "retinad"])
    assert (root / "usr/bin/retinad").stat().st_mode & 0o777 == 0o755
    conf = root / "etc/retinad/retinad.toml"
    conf.write_text(conf.read_text() + "\n# changed by the admin\n")
    run(["rpm", *db, "-Uvh", "--nodeps", str(packages.rpm_next)])
    assert run(["rpm", *db, "-q", "retinad"]).strip() == (f"retinad-{packages.version}-2.noarch")
    assert conf.read_text().endswith("# changed by the admin\n")
    assert not (root / "etc/retinad/retinad.toml.rpmnew").exists()
    run(["rpm", *db, "-e", "--nodeps", "retinad"])
    assert not (root / "usr/lib/retinad").exists()
    assert not (root / "usr/bin/retinad").exists()
    # rpm keeps a changed config as .rpmsave (there is no purge in rpm).
    assert (root / "etc/retinad/retinad.toml.rpmsave").read_text().endswith("admin\n")


def test_lintian_is_clean(packages: Packages) -> None:
    """Clean means no error, warning or info tag beyond packaging/lintian-overrides."""
    out = run(["lintian", "--fail-on", "error,warning,info", "--info", str(packages.deb)])
    assert [ln for ln in out.splitlines() if ln[:2] in ("E:", "W:", "I:")] == []
