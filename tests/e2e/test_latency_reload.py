"""[latency] on SIGHUP: refused with a warning, the running targets keep being measured.

The targets, timeout and map size reach packetparser at start (a changed timeout or size
would mean new programs, and whether latency is compiled in at all depends on them), so a
reload that changes them says so and keeps what runs, rather than silently ignoring them.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon_proc import DaemonProcess, NotifySocket, http_get, wait_for


def config(target: str) -> str:
    return (
        '[metrics]\nmode = "basic"\n[dropreason]\nenabled = false\n'
        f'[[latency.targets]]\nname = "{target}"\naddress = "192.0.2.0/24"\n'
    )


def series(target: str) -> str:
    return f'retinad_handshake_latency_seconds_count{{direction="egress",target="{target}"}}'


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path / "notify.sock")
    yield sock
    sock.close()


def test_a_latency_change_on_sighup_warns_and_keeps_the_running_targets(
    tmp_path: Path, notify: NotifySocket, free_port: int
) -> None:
    cfg = tmp_path / "retinad.toml"
    cfg.write_text(config("before"))
    url = f"http://127.0.0.1:{free_port}/metrics"
    args = ["--web.listen-address", f"127.0.0.1:{free_port}", "--config.file", str(cfg)]
    d = DaemonProcess(args, workdir=tmp_path, env={"NOTIFY_SOCKET": str(notify.path)})
    try:
        notify.wait_for("READY=1", timeout=120)
        assert series("before") in http_get(url)[1]
        cfg.write_text(config("after"))
        d.signal(signal.SIGHUP)
        notify.wait_for("RELOADING=1")
        notify.wait_for("READY=1", timeout=60)
        wait_for(lambda: "[latency] changes take effect on restart" in d.log, what="warning")
        body = http_get(url)[1]
        assert series("before") in body
        assert series("after") not in body
        assert 'retinad_scrape_collector_success{collector="packetparser"} 1.0' in body
    finally:
        assert d.stop() == 0
