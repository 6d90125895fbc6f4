"""sd_notify against a real unix datagram socket, in-process."""

from __future__ import annotations

import os
from pathlib import Path

from retinad.daemon.systemd import Notifier
from tests.daemon_proc import NotifySocket


def test_notifier_sends_each_state(tmp_path: Path) -> None:
    sock = NotifySocket(tmp_path / "notify")
    n = Notifier({"NOTIFY_SOCKET": str(sock.path), "WATCHDOG_USEC": "3000000"})
    assert n.enabled and n.watchdog_interval == 1.5
    n.status("compiling")
    n.ready("attached to 3 interfaces")
    n.watchdog()
    n.reloading()
    n.stopping()
    got = [sock.recv(1.0) for _ in range(5)]
    assert got == [
        "STATUS=compiling",
        "READY=1\nSTATUS=attached to 3 interfaces",
        "WATCHDOG=1",
        "RELOADING=1\nSTATUS=reloading configuration",
        "STOPPING=1\nSTATUS=stopping",
    ]
    n.close()
    sock.close()


def test_abstract_notify_socket(tmp_path: Path) -> None:
    import socket

    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"retinad-test-{os.getpid()}"
    s.bind("\0" + name)
    s.settimeout(1.0)
    n = Notifier({"NOTIFY_SOCKET": "@" + name})
    n.ready("ok")
    assert s.recv(100) == b"READY=1\nSTATUS=ok"
    n.close()
    s.close()


def test_without_systemd_everything_is_silent() -> None:
    n = Notifier({})
    assert not n.enabled and n.watchdog_interval is None
    n.ready("x")
    n.watchdog()
    n.stopping()


def test_watchdog_for_another_pid_is_ignored() -> None:
    n = Notifier({"NOTIFY_SOCKET": "/nonexistent", "WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"})
    assert n.watchdog_interval is None
    assert not n.enabled  # the socket does not exist: best effort, no error
