"""A loopback TCP proxy in front of the real kube-apiserver that can cut the line.

It adds the one fault the real server cannot produce on demand: a client that loses its
connections (and cannot reconnect) while the cluster keeps changing, then comes back to
resume its watches from resourceVersions that may since have been compacted. TLS passes
through untouched, so the client still verifies the apiserver's own certificate (issued
for 127.0.0.1; the port does not enter the check).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType
from typing import Self


class _Pipe:
    """One proxied connection: two sockets and the two threads pumping between them."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = client
        self.upstream = upstream
        self._lock = threading.Lock()
        self._running = 2
        self.threads = [
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True),
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True),
        ]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        self.cut()
        with self._lock:
            self._running -= 1
            last = self._running == 0
        if last:
            self.client.close()
            self.upstream.close()

    def cut(self) -> None:
        """Shut both sockets down: both pumps return, the client sees the line drop."""
        for s in (self.client, self.upstream):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


class FaultProxy:
    """``127.0.0.1:<port>`` -> ``upstream``; ``block()`` drops every connection and refuses
    new ones (accepted, then closed at once) until ``unblock()``."""

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self._upstream = (upstream_host, upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._pipes: set[_Pipe] = set()
        self._blocked = threading.Event()
        self._closed = False
        self.accepted = 0
        self.refused = 0
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

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def block(self) -> None:
        self._blocked.set()
        self.drop_all()

    def unblock(self) -> None:
        self._blocked.clear()

    def drop_all(self) -> None:
        with self._lock:
            pipes = list(self._pipes)
        for p in pipes:
            p.cut()

    def close(self) -> None:
        with self._lock:
            self._closed = True
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes accept()
        self._thread.join(5)
        self._listener.close()
        self.drop_all()
        with self._lock:
            pipes = list(self._pipes)
        for p in pipes:
            for t in p.threads:
                t.join(5)

    def _accept_loop(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                closed = self._closed
            if closed or self._blocked.is_set():
                self.refused += 1
                conn.close()
                if closed:
                    return
                continue
            try:
                upstream = socket.create_connection(self._upstream, timeout=5)
            except OSError:
                conn.close()
                continue
            upstream.settimeout(None)
            self.accepted += 1
            pipe = _Pipe(conn, upstream)
            with self._lock:
                self._pipes = {p for p in self._pipes if any(t.is_alive() for t in p.threads)}
                self._pipes.add(pipe)
            pipe.start()
