"""systemd notification (sd_notify) and the watchdog gate.

sdnotify does the protocol (NOTIFY_SOCKET, abstract sockets) and is silent without
systemd. The watchdog interval comes from WATCHDOG_USEC (when WATCHDOG_PID is unset or
ours); we ping at half of it, and only from the main loop and only while every component
reports healthy, so a stuck loop or a dead thread lets systemd's watchdog fire.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import sdnotify


class Notifier:
    """READY/STATUS/WATCHDOG/STOPPING to systemd; no-ops without NOTIFY_SOCKET."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.enabled = bool(env.get("NOTIFY_SOCKET"))
        self._sd = sdnotify.SystemdNotifier() if self.enabled else None
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
