"""The local unix socket `retinad flows` follows: every flow record, one JSON line each.

Root only, twice over: the socket file is mode 0600 (owned by the daemon's user, root),
so the kernel refuses anyone else's connect(); and each accepted peer's credentials
(SO_PEERCRED) are checked again, so a socket file made more permissive by hand still
serves no one but root. A refused peer gets one line ``{"error": ...}`` and is closed.

Each client has its own bounded buffer and sender thread: a slow client loses its own
records (counted and sent to it as ``{"dropped": n}`` once it catches up), never the
flow log's or another client's, and never blocks the writer thread.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import select
import socket
import stat
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

CLIENT_BUFFER = 65536
"""Records one client may have waiting before its newest are dropped."""
MAX_CLIENTS = 16

_UCRED = struct.Struct("=iII")  # pid, uid, gid


def peer_uid(conn: socket.socket) -> int:
    raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    return int(_UCRED.unpack(raw)[1])


class _Client:
    def __init__(self, conn: socket.socket, log: logging.Logger) -> None:
        self.conn = conn
        self._log = log
        self._lines: collections.deque[bytes] = collections.deque()
        self._cond = threading.Condition()
        self.dropped = 0
        self.closed = False
        self._thread = threading.Thread(target=self._send_loop, name="flows-client", daemon=True)
        self._thread.start()

    def offer(self, lines: list[bytes]) -> None:
        with self._cond:
            room = CLIENT_BUFFER - len(self._lines)
            if room < len(lines):
                self.dropped += len(lines) - max(room, 0)
                lines = lines[: max(room, 0)]
            self._lines.extend(lines)
            self._cond.notify()

    def _send_loop(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._lines and not self.closed:
                        self._cond.wait()
                    if self.closed:
                        return
                    batch = b"".join(self._lines)
                    self._lines.clear()
                    dropped, self.dropped = self.dropped, 0
                if dropped:
                    batch = json.dumps({"dropped": dropped}).encode() + b"\n" + batch
                self.conn.sendall(batch)
        except OSError:  # the client went away
            pass
        finally:
            self.close()

    def gone(self) -> bool:
        """The peer hung up (clients never send, so readable means EOF)."""
        if self.closed:
            return True
        p = select.poll()
        p.register(self.conn, select.POLLIN | select.POLLHUP | select.POLLERR)
        if p.poll(0):
            self.close()
        return self.closed

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify()
        with contextlib.suppress(OSError):
            self.conn.close()


class FlowSocket:
    """Serve records on ``path`` for as long as it runs; ``publish`` is a subscriber of
    plugins/flow_events.FlowEvents."""

    def __init__(self, path: str, log: logging.Logger, *, root_uid: int = 0) -> None:
        self.path = Path(path)
        self._log = log
        self._root_uid = root_uid
        self._clients: list[_Client] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.refused = 0
        self.accepted = 0
        self._sock = self._bind()
        self._thread = threading.Thread(target=self._accept_loop, name="flows-socket", daemon=True)
        self._unsubscribe: Callable[[], None] | None = None

    def _bind(self) -> socket.socket:
        self.path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(self.path.lstat().st_mode):
                self.path.unlink()  # left by a daemon that did not stop cleanly
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old = os.umask(0o177)  # created 0600: no window in which others may connect
        try:
            sock.bind(str(self.path))
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        sock.listen(MAX_CLIENTS)
        sock.settimeout(0.2)
        return sock

    def start(self, subscribe: Callable[[Callable[[list[dict[str, Any]]], None]], Any]) -> None:
        self._unsubscribe = subscribe(self.publish)
        self._thread.start()

    @property
    def clients(self) -> int:
        with self._lock:
            return sum(not c.gone() for c in self._clients)

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            uid = peer_uid(conn)
            if uid != self._root_uid or self.clients >= MAX_CLIENTS:
                self.refused += 1
                why = "retinad flows is for root only" if uid != self._root_uid else "too many"
                with contextlib.suppress(OSError):
                    conn.sendall(json.dumps({"error": why}).encode() + b"\n")
                conn.close()
                continue
            with self._lock:
                self._clients = [c for c in self._clients if not c.closed]
                self._clients.append(_Client(conn, self._log))
                self.accepted += 1

    def publish(self, records: list[dict[str, Any]]) -> None:
        with self._lock:
            clients = [c for c in self._clients if not c.closed]
        if not clients:
            return
        lines = [json.dumps(r, separators=(",", ":")).encode() + b"\n" for r in records]
        for c in clients:
            c.offer(lines)

    def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
        self._stop.set()
        with contextlib.suppress(OSError):
            self._sock.close()
        if self._thread.is_alive():
            self._thread.join()
        with self._lock:
            for c in self._clients:
                c.close()
            self._clients.clear()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
