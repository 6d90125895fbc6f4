"""Run the real retinad command as a subprocess for tests, with a real NOTIFY_SOCKET."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
RETINAD = [sys.executable, "-m", "retinad"]


def wait_for(fn: Callable[[], T | None], *, timeout: float = 10.0, what: str = "condition") -> T:
    """Poll ``fn`` until it returns something truthy, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


class NotifySocket:
    """A unix datagram socket standing in for systemd's notify socket."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[str] = []

    def recv(self, timeout: float) -> str | None:
        self.sock.settimeout(timeout)
        try:
            msg = self.sock.recv(4096).decode()
        except TimeoutError:
            return None
        self.messages.append(msg)
        return msg

    def wait_for(self, prefix: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = self.recv(max(0.01, deadline - time.monotonic()))
            if msg is not None and msg.startswith(prefix):
                return msg
        raise AssertionError(f"no {prefix!r} within {timeout}s; got {self.messages}")

    def close(self) -> None:
        self.sock.close()


class DaemonProcess:
    """retinad in a subprocess with stderr in a file the test can read."""

    def __init__(
        self,
        args: Sequence[str],
        *,
        workdir: Path,
        env: dict[str, str] | None = None,
        prefix: Sequence[str] = (),
    ) -> None:
        """``prefix`` wraps the command, e.g. ``setpriv`` to run with fewer capabilities."""
        self.log_path = workdir / "retinad.log"
        self._log = self.log_path.open("wb")
        full_env = {**os.environ, **(env or {})}
        self.proc = subprocess.Popen(
            [*prefix, *RETINAD, *args], stdout=self._log, stderr=subprocess.STDOUT, env=full_env
        )

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM unless it already exited; wait; return the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self._log.close()
        return rc


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def try_get(url: str) -> tuple[int, str] | None:
    try:
        return http_get(url, timeout=1.0)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None
