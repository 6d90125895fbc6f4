"""[latency] on SIGHUP: new targets go into the running programs' target map (no
recompile); a new timeout or map size (compiled in) is refused with a warning and the
running settings keep being measured, never silently ignored.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon_proc import DaemonProcess, NotifySocket, http_get, wait_for


def config(target: str, timeout: int = 5) -> str:
    return (
        '[metrics]\nmode = "basic"\n[dropreason]\nenabled = false\n'
        f"[latency]\ntimeout_seconds = {timeout}\n"
        f'[[latency.targets]]\nname = "{target}"\naddress = "192.0.2.0/24"\n'
    )


def series(target: str) -> str:
    return f'retinad_handshake_latency_seconds_count{{direction="egress",target="{target}"}}'


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path / "notify.sock")
    yield sock
    sock.close()


def reload(d: DaemonProcess, notify: NotifySocket) -> None:
    d.signal(signal.SIGHUP)
    notify.wait_for("RELOADING=1")
    notify.wait_for("READY=1", timeout=120)


def test_new_targets_on_sighup_apply_and_a_compiled_in_change_is_refused(
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
        programs = d.log.count("compiled")
        # new targets: applied to the running programs, no new compile
        cfg.write_text(config("after"))
        reload(d, notify)
        wait_for(lambda: "reload: [latency] targets applied: 1" in d.log, what="applied")
        body = http_get(url)[1]
        assert series("after") in body
        assert series("before") not in body
        assert d.log.count("compiled") == programs
        assert 'retinad_scrape_collector_success{collector="packetparser"} 1.0' in body
        # a new timeout is compiled in: refused, the running targets stay
        cfg.write_text(config("later", timeout=7))
        reload(d, notify)
        wait_for(lambda: "[latency] changes take effect on restart" in d.log, what="warning")
        body = http_get(url)[1]
        assert series("after") in body
        assert series("later") not in body
    finally:
        assert d.stop() == 0
