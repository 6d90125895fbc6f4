"""The README's run command: the daemon on the embedded default config, every plugin on.

The only differences from ``make run`` are the listen address (a free loopback port, so a
retinad an operator runs on :10095 is not disturbed) and a notify socket to know when it
is ready. Its /metrics must pass ``promtool check metrics`` with zero complaints, in both
namings.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon_proc import DaemonProcess, NotifySocket, http_get

PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path / "notify.sock")
    yield sock
    sock.close()


def promtool_check(body: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PROMTOOL, "check", "metrics"], input=body, capture_output=True, text=True, timeout=30
    )


@pytest.mark.parametrize("naming", ["prometheus", "retina"])
def test_default_config_serves_metrics_that_pass_promtool(
    tmp_path: Path, notify: NotifySocket, free_port: int, naming: str
) -> None:
    args = ["--web.listen-address", f"127.0.0.1:{free_port}"]
    if naming == "retina":
        cfg = tmp_path / "retinad.toml"
        cfg.write_text('[metrics]\nnaming = "retina"\n')
        args += ["--config.file", str(cfg)]
    d = DaemonProcess(args, workdir=tmp_path, env={"NOTIFY_SOCKET": str(notify.path)})
    try:
        ready = notify.wait_for("READY=1", timeout=120)
        assert "packetparser:" in ready and "dropreason:" in ready, ready
        status, body = http_get(f"http://127.0.0.1:{free_port}/metrics")
        assert status == 200
        for collector in ("packetparser", "dropreason"):
            assert f'retinad_scrape_collector_success{{collector="{collector}"}} 1.0' in body
        if naming == "retina":
            assert "networkobservability_forward_count{" in body
        else:
            assert "retinad_forward_packets_total{" in body
        check = promtool_check(body)
        if naming == "prometheus":
            assert (check.returncode, check.stdout, check.stderr) == (0, "", "")
        else:
            # Retina's own names end in _count, which promtool's linter flags (exit 3);
            # that lint finding, once per such name, must be the only complaint.
            count_names = sorted(
                {
                    line.split("{")[0].split()[0]
                    for line in body.splitlines()
                    if line and not line.startswith("#") and line.split("{")[0].endswith("_count")
                }
            )
            expected = "".join(
                f'{n} non-histogram and non-summary metrics should not have "_count" suffix\n'
                for n in count_names
            )
            assert count_names, "no retina _count series at all"
            assert (check.returncode, check.stdout) == (3, "")
            assert sorted(check.stderr.splitlines(True)) == sorted(expected.splitlines(True))
        if naming == "prometheus":
            assert "using the embedded default config" in d.log
    finally:
        assert d.stop() == 0
