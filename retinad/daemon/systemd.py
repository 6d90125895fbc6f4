"""systemd notification (sd_notify) and the watchdog gate.

sdnotify does the protocol (NOTIFY_SOCKET, abstract sockets) and is silent without
systemd. The watchdog interval comes from WATCHDOG_USEC (when WATCHDOG_PID is unset or
ours); we ping at half of it, and only from the main loop and only while every component
reports healthy, so a stuck loop or a dead thread lets systemd's watchdog fire.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

import sdnotify


class _SocketNotifier(sdnotify.SystemdNotifier):  # type: ignore[misc]
    """sdnotify's sender, connected to an address we pass in.

    sdnotify reads NOTIFY_SOCKET from the process environment itself and leaks its socket
    when the connect fails; taking the address as an argument keeps the environment
    injectable (tests, a re-exec) and the socket closed on error.
    """

    def __init__(self, address: str) -> None:
        self.debug = False
        addr = "\0" + address[1:] if address.startswith("@") else address
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            self.socket.connect(addr)
        except OSError:
            self.socket.close()
            raise


class Notifier:
    """READY/STATUS/WATCHDOG/STOPPING to systemd; no-ops without NOTIFY_SOCKET."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self._sd: _SocketNotifier | None = None
        if address:
            try:
                self._sd = _SocketNotifier(address)
            except OSError:
                self._sd = None  # systemd gone or socket not ours: notify is best effort
        self.enabled = self._sd is not None
        self.watchdog_interval = _watchdog_interval(env)
        """Seconds between WATCHDOG=1 pings, or None when systemd wants none."""

    def _send(self, msg: str) -> None:
        if self._sd is not None:
            self._sd.notify(msg)

    def ready(self, status: str) -> None:
        self._send(f"READY=1\nSTATUS={status}")

    def status(self, status: str) -> None:
        self._send(f"STATUS={status}")

    def reloading(self) -> None:
        self._send("RELOADING=1\nSTATUS=reloading configuration")

    def watchdog(self) -> None:
        self._send("WATCHDOG=1")

    def stopping(self) -> None:
        self._send("STOPPING=1\nSTATUS=stopping")

    def close(self) -> None:
        if self._sd is not None:
            self._sd.socket.close()
            self._sd = None


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    usec = env.get("WATCHDOG_USEC")
    pid = env.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 2e6 if value > 0 else None
