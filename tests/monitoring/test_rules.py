"""Alert and recording rules: promtool check rules, and promtool's unit tests for every alert
(one input it fires on with exact labels and annotations, one it must stay silent on)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from monitoring.rules import ALERTS

PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
RULES = Path(__file__).parents[2] / "monitoring" / "rules"
RULE_FILES = sorted(RULES.glob("*.rules.yml"))


def promtool(*args: str, cwd: Path = RULES) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PROMTOOL, *args], capture_output=True, text=True, timeout=60, cwd=cwd, check=False
    )


@pytest.mark.parametrize("path", RULE_FILES, ids=lambda p: p.name)
def test_promtool_check_rules_is_clean(path: Path) -> None:
    done = promtool("check", "rules", path.name)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(ALERTS) + 4} rules found" in done.stdout
    assert done.stderr == ""


@pytest.mark.parametrize("path", RULE_FILES, ids=lambda p: p.name)
def test_every_alert_fires_and_stays_silent_in_promtool(path: Path) -> None:
    tests = path.with_name(path.name.replace(".rules.yml", ".test.yml"))
    doc = yaml.safe_load(tests.read_text())
    named = sorted(t["name"] for t in doc["tests"])
    want = [f"{a.name} {c}" for a in ALERTS for c in ("fires", "silent")]
    if "retina-naming" in path.name:  # latency target apiserver under Retina's names
        want += [
            f"{a.name} {c} (apiserver, Retina's names)"
            for a in ALERTS
            if a.retina_or
            for c in ("fires", "silent")
        ]
        assert len(want) == 2 * len(ALERTS) + 4
    assert named == sorted(want)
    alerts_in_file = [
        r["alert"]
        for g in yaml.safe_load(path.read_text())["groups"]
        for r in g["rules"]
        if "alert" in r
    ]
    assert sorted(alerts_in_file) == sorted(a.name for a in ALERTS)
    done = promtool("test", "rules", tests.name)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_promtool_unit_tests_fail_when_a_threshold_moves(tmp_path: Path) -> None:
    """The unit tests can fail: a drop threshold nudged from 100 to 102/s and a down check
    inverted are both caught, each by name."""
    rules = (RULES / "retinad.rules.yml").read_text()
    assert "rate5m > 100\n" in rules and 'up{job="retinad"} == 0\n' in rules
    rules = rules.replace("rate5m > 100\n", "rate5m > 102\n")
    rules = rules.replace('up{job="retinad"} == 0\n', 'up{job="retinad"} == 1\n')
    (tmp_path / "retinad.rules.yml").write_text(rules)
    shutil.copy(RULES / "retinad.test.yml", tmp_path)
    done = promtool("test", "rules", "retinad.test.yml", cwd=tmp_path)
    assert done.returncode == 1
    report = done.stdout + done.stderr
    failed = {
        line.split(",")[0].split(": ")[1]
        for line in report.splitlines()
        if line.strip().startswith("name:")
    }
    assert failed == {"RetinadHighDropRate fires", "RetinadDown fires", "RetinadDown silent"}
