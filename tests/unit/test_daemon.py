"""The daemon process: READY/STATUS/WATCHDOG over a real notify socket, SIGHUP, SIGTERM.

Plugins are disabled here (they have their own kernel tests and the e2e test runs them
all), so these tests exercise the lifecycle alone and take seconds.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon_proc import DaemonProcess, NotifySocket, http_get, try_get, wait_for

NO_PLUGINS = ["--no-collector.packetparser", "--no-collector.dropreason"]


def write_config(path: Path, port: int, telemetry_path: str = "/metrics") -> None:
    path.write_text(
        f'[web]\nlisten_address = ["127.0.0.1:{port}"]\ntelemetry_path = "{telemetry_path}"\n'
    )


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path / "notify.sock")
    yield sock
    sock.close()


def start(
    tmp_path: Path, notify: NotifySocket, port: int, watchdog_usec: int = 400_000
) -> DaemonProcess:
    cfg = tmp_path / "retinad.toml"
    write_config(cfg, port)
    return DaemonProcess(
        ["--config.file", str(cfg), *NO_PLUGINS],
        workdir=tmp_path,
        env={"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": str(watchdog_usec)},
    )


def test_ready_status_watchdog_then_stopping(
    tmp_path: Path, notify: NotifySocket, free_port: int
) -> None:
    d = start(tmp_path, notify, free_port)
    try:
        ready = notify.wait_for("READY=1")
        assert ready == f"READY=1\nSTATUS=no plugins enabled; serving on 127.0.0.1:{free_port}"
        # STATUS= steps came before READY=1, in order.
        before = notify.messages[: notify.messages.index(ready)]
        assert before == ["STATUS=starting web server", "STATUS=starting resolvers"]
        for _ in range(3):
            assert notify.wait_for("WATCHDOG=1", timeout=2.0) == "WATCHDOG=1"
        status, body = http_get(f"http://127.0.0.1:{free_port}/metrics")
        assert status == 200 and "retinad_build_info{" in body
    finally:
        rc = d.stop()
    assert rc == 0
    assert notify.wait_for("STOPPING=1", timeout=5) == "STOPPING=1\nSTATUS=stopping"
    assert try_get(f"http://127.0.0.1:{free_port}/metrics") is None, "port still served"


def test_stalled_main_loop_stops_the_watchdog(
    tmp_path: Path, notify: NotifySocket, free_port: int
) -> None:
    d = start(tmp_path, notify, free_port, watchdog_usec=400_000)  # ping every 0.2 s
    try:
        notify.wait_for("WATCHDOG=1")
        d.signal(signal.SIGSTOP)  # the whole process, main loop included, stalls
        # Drain anything already in flight, then nothing may arrive for 5 intervals.
        while notify.recv(0.25) is not None:
            pass
        assert notify.recv(1.0) is None, "WATCHDOG=1 sent by a stalled process"
        d.signal(signal.SIGCONT)
        assert notify.wait_for("WATCHDOG=1", timeout=3.0) == "WATCHDOG=1"
    finally:
        assert d.stop() == 0


def test_sighup_applies_a_valid_config_and_keeps_the_old_on_error(
    tmp_path: Path, notify: NotifySocket, free_port: int
) -> None:
    d = start(tmp_path, notify, free_port)
    base = f"http://127.0.0.1:{free_port}"
    try:
        notify.wait_for("READY=1")
        cfg = tmp_path / "retinad.toml"
        write_config(cfg, free_port, telemetry_path="/m2")
        d.signal(signal.SIGHUP)
        assert notify.wait_for("RELOADING=1").startswith("RELOADING=1")
        notify.wait_for("READY=1")
        wait_for(lambda: (try_get(base + "/m2") or (0, ""))[0] == 200, what="/m2 served")
        assert http_get(base + "/metrics")[0] == 404

        cfg.write_text('[web]\nlisten_address = ["127.0.0.1:1"]\ntelemetry_path = 7\n')
        d.signal(signal.SIGHUP)
        wait_for(lambda: "reload refused" in d.log, what="the refusal in the log")
        assert f"{cfg}: [web].telemetry_path: expected a string, got 7" in d.log
        assert http_get(base + "/m2")[0] == 200  # old config still in force
    finally:
        assert d.stop() == 0


def test_sigint_also_stops_cleanly(tmp_path: Path, notify: NotifySocket, free_port: int) -> None:
    d = start(tmp_path, notify, free_port)
    notify.wait_for("READY=1")
    d.signal(signal.SIGINT)
    assert d.proc.wait(20) == 0
    assert d.stop() == 0


def test_port_in_use_fails_start_with_exit_1(
    tmp_path: Path, notify: NotifySocket, free_port: int
) -> None:
    import socket

    holder = socket.socket()
    holder.bind(("127.0.0.1", free_port))
    holder.listen()
    try:
        d = start(tmp_path, notify, free_port)
        assert d.proc.wait(20) == 1
        assert d.stop() == 1
        assert f"127.0.0.1:{free_port}" in d.log
        assert "READY=1" not in "".join(notify.messages)
    finally:
        holder.close()
