"""A unix-socket proxy in front of a real engine's socket (dockerd, containerd) that adds the
faults the engine itself cannot be made to show on demand.

* ``stall()``: every connection, open or new, stops forwarding in both directions and is
  never closed: an engine that accepts and then never answers, and a connection that died
  without a FIN (a half-open stream: the client's reads just block), at once.
* ``cut()``: every open connection is shut down mid-stream (the client sees EOF/RST).
* ``heal()``: new connections are forwarded again (stalled ones stay dead until the client
  closes them, as a really dead connection would).
* ``blind_docker_events(True)``: the ``filters`` of every Docker ``GET .../events``
  request are rewritten to a type that never occurs, so the stream stays healthy (dockerd
  still opens and ends it) but carries no container event: events are missed while the
  connection looks fine, the one thing only a periodic resync repairs.

Everything is at the byte level on loopback; nothing of the resolver is patched.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import urllib.parse
from pathlib import Path
from types import TracebackType
from typing import Self

_EVENTS_REQUEST = re.compile(rb"(GET [^ ]*/events\?[^ ]*?)filters=[^& ]*")
_NO_EVENTS = b"filters=" + urllib.parse.quote('{"type":["plugin"]}').encode()


class _Pipe:
    def __init__(self, proxy: StreamFaultProxy, client: socket.socket, upstream: socket.socket):
        self.proxy = proxy
        self.client = client
        self.upstream = upstream
        self.stalled = threading.Event()
        self._lock = threading.Lock()
        self._running = 2
        self.threads = [
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True),
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True),
        ]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def _pump(self, src: socket.socket, dst: socket.socket, from_client: bool) -> None:
        try:
            while data := src.recv(65536):
                if self.stalled.is_set():
                    continue  # swallowed: nothing moves, nothing closes
                if from_client and self.proxy.blind.is_set():
                    data = _EVENTS_REQUEST.sub(rb"\1" + _NO_EVENTS, data)
                dst.sendall(data)
        except OSError:
            pass
        if from_client or not self.stalled.is_set():
            self.cut()  # a stalled line hides the engine's own close from the client too
        with self._lock:
            self._running -= 1
            last = self._running == 0
        if last:
            self.client.close()
            self.upstream.close()

    def cut(self) -> None:
        for s in (self.client, self.upstream):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


class StreamFaultProxy:
    """``path`` (a unix socket this proxy listens on) -> ``upstream`` (a unix socket)."""

    def __init__(self, path: Path, upstream: str) -> None:
        self.path = path
        self._upstream = upstream
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(path))
        self._listener.listen(64)
        self._lock = threading.Lock()
        self._pipes: list[_Pipe] = []
        self._stalled = threading.Event()
        self.blind = threading.Event()
        self.accepted = 0
        self._thread = threading.Thread(target=self._accept_loop, name="fault-proxy", daemon=True)
        self._thread.start()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def stall(self) -> None:
        self._stalled.set()
        for p in self._live():
            p.stalled.set()

    def heal(self) -> None:
        self._stalled.clear()

    def cut(self) -> None:
        for p in self._live():
            p.cut()

    def blind_docker_events(self, on: bool) -> None:
        if on:
            self.blind.set()
        else:
            self.blind.clear()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._thread.join(5)
        pipes = self._live()
        for p in pipes:
            p.cut()
        for p in pipes:
            for t in p.threads:
                t.join(5)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def _live(self) -> list[_Pipe]:
        with self._lock:
            self._pipes = [p for p in self._pipes if any(t.is_alive() for t in p.threads)]
            return list(self._pipes)

    def _accept_loop(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                upstream.connect(self._upstream)
            except OSError:
                conn.close()
                upstream.close()
                continue
            self.accepted += 1
            pipe = _Pipe(self, conn, upstream)
            if self._stalled.is_set():
                pipe.stalled.set()
            with self._lock:
                self._pipes.append(pipe)
            pipe.start()
