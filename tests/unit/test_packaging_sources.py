"""Fast checks of the packaging sources (the slow tier, tests/package, builds and installs).

One version (retinad/__init__.py, read by pyproject and by packaging/changelog.py), a
CHANGELOG whose newest section is that version, nfpm sources that exist, and a unit whose
capability set is exactly the documented one.
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import yaml

import retinad

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "packaging"))
import changelog  # noqa: E402


def test_one_version_everywhere() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "packaging/changelog.py"), "version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == retinad.__version__
    assert importlib.metadata.version("retinad") == retinad.__version__
    assert 'version = "' not in (ROOT / "pyproject.toml").read_text().split("[project]")[1][:300]


def test_changelog_newest_section_is_the_version(tmp_path: Path) -> None:
    entries = changelog.parse_changelog((ROOT / "CHANGELOG.md").read_text())
    assert entries[0][0] == retinad.__version__
    assert all(len(c) <= changelog.MAX_NOTE for _, _, cs in entries for c in cs)
    out = tmp_path / "changelog.yml"
    changelog.changelog(out)
    parsed = yaml.safe_load(out.read_text())
    assert parsed[0]["semver"] == f"{retinad.__version__}-1"
    assert [c["note"] for c in parsed[0]["changes"]] == entries[0][2]


def test_parse_changelog_joins_wrapped_bullets() -> None:
    text = (
        "# C\n\n## [1.2.0] - 2026-01-02\n\n- one\n  more\n- two\n\n## [1.1.0] - 2025-01-01\n- x\n"
    )
    assert changelog.parse_changelog(text) == [
        ("1.2.0", "2026-01-02", ["one more", "two"]),
        ("1.1.0", "2025-01-01", ["x"]),
    ]


def test_nfpm_sources_exist() -> None:
    cfg = yaml.safe_load((ROOT / "packaging/nfpm.yaml").read_text())
    srcs = [c["src"] for c in cfg["contents"] if not c["src"].startswith("build/")]
    assert [s for s in srcs if not (ROOT / s).exists()] == []
    scripts = [*cfg["overrides"]["deb"]["scripts"].values()]
    scripts += cfg["overrides"]["rpm"]["scripts"].values()
    assert [s for s in scripts if not (ROOT / s).exists()] == []


def test_unit_capabilities_are_exactly_the_documented_four() -> None:
    unit = (ROOT / "systemd/retinad.service").read_text().splitlines()
    caps = [ln.split("=", 1)[1].split() for ln in unit if ln.startswith("CapabilityBoundingSet=")]
    assert caps == [["CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN", "CAP_SYS_PTRACE"]]
    assert "Type=notify" in unit and "Restart=on-failure" in unit
    assert "ExecReload=/bin/kill -HUP $MAINPID" in unit
