"""Loopback proxies in front of real servers that add the faults a server cannot be made to
show on demand. Everything is at the byte level; nothing of retinad is patched.

``FaultProxy`` (TCP, in front of the kube-apiserver): ``block()`` drops every connection
and refuses new ones (accepted, then closed at once) until ``unblock()``: a client that
loses its connections while the cluster keeps changing, then resumes its watches from
resourceVersions that may since have been compacted. TLS passes through untouched, so the
client still verifies the apiserver's own certificate (issued for 127.0.0.1).

``StreamFaultProxy`` (unix socket, in front of dockerd or containerd):

* ``stall()``: every connection, open or new, stops forwarding in both directions and is
  never closed: a server that accepts and then never answers, and a connection that died
  without a FIN (the client's reads just block), at once. A stalled line hides the
  server's own close from the client too.
* ``cut()``: every open connection is shut down mid-stream (the client sees EOF).
* ``heal()``: new connections are forwarded again (stalled ones stay dead until the client
  closes them, as a really dead connection would).
* ``blind_docker_events(True)``: the ``filters`` of every Docker ``GET .../events`` request
  are rewritten to a type that never occurs, so the stream stays healthy (dockerd still
  opens and ends it) but carries no container event: events are missed while the
  connection looks fine, which only a periodic resync repairs.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self

_EVENTS_REQUEST = re.compile(rb"(GET [^ ]*/events\?[^ ]*?)filters=[^& ]*")
_NO_EVENTS = b"filters=" + urllib.parse.quote('{"type":["plugin"]}').encode()


class _Pipe:
    """One proxied connection: two sockets and the two threads pumping between them.
    ``rewrite`` (if given) edits what the client sends; ``stalled`` swallows everything."""

    def __init__(
        self,
        client: socket.socket,
        upstream: socket.socket,
        rewrite: Callable[[bytes], bytes] | None = None,
    ) -> None:
        self.client = client
        self.upstream = upstream
        self.rewrite = rewrite
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

    def alive(self) -> bool:
        return any(t.is_alive() for t in self.threads)

    def _pump(self, src: socket.socket, dst: socket.socket, from_client: bool) -> None:
        try:
            while data := src.recv(65536):
                if self.stalled.is_set():
                    continue  # swallowed: nothing moves, nothing closes
                if from_client and self.rewrite is not None:
                    data = self.rewrite(data)
                dst.sendall(data)
        except OSError:
            pass
        if from_client or not self.stalled.is_set():
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


class _Proxy:
    """The listener, the accept loop and the live pipes; subclasses say how to reach the
    upstream and what to do with a new connection."""

    def __init__(self, listener: socket.socket) -> None:
        self._listener = listener
        self._lock = threading.Lock()
        self._pipes: list[_Pipe] = []
        self._closed = False
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

    def _connect_upstream(self) -> socket.socket:
        raise NotImplementedError

    def _admit(self, conn: socket.socket) -> bool:
        """False to refuse ``conn`` (it is closed at once)."""
        return True

    def _pipe(self, conn: socket.socket, upstream: socket.socket) -> _Pipe:
        return _Pipe(conn, upstream)

    def live(self) -> list[_Pipe]:
        with self._lock:
            self._pipes = [p for p in self._pipes if p.alive()]
            return list(self._pipes)

    def cut(self) -> None:
        for p in self.live():
            p.cut()

    def close(self) -> None:
        with self._lock:
            self._closed = True
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes accept()
        self._thread.join(5)
        self._listener.close()
        pipes = self.live()
        for p in pipes:
            p.cut()
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
            if closed or not self._admit(conn):
                conn.close()
                if closed:
                    return
                continue
            try:
                upstream = self._connect_upstream()
            except OSError:
                conn.close()
                continue
            self.accepted += 1
            pipe = self._pipe(conn, upstream)
            with self._lock:
                self._pipes = [p for p in self._pipes if p.alive()]
                self._pipes.append(pipe)
            pipe.start()


class FaultProxy(_Proxy):
    """``127.0.0.1:<port>`` -> ``upstream``; ``block()`` drops every connection and refuses
    new ones until ``unblock()``."""

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self._upstream = (upstream_host, upstream_port)
        self._blocked = threading.Event()
        self.refused = 0
        listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = listener.getsockname()[1]
        super().__init__(listener)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def block(self) -> None:
        self._blocked.set()
        self.drop_all()

    def unblock(self) -> None:
        self._blocked.clear()

    def drop_all(self) -> None:
        self.cut()

    def _admit(self, conn: socket.socket) -> bool:
        if self._blocked.is_set():
            self.refused += 1
            return False
        return True

    def _connect_upstream(self) -> socket.socket:
        upstream = socket.create_connection(self._upstream, timeout=5)
        upstream.settimeout(None)
        return upstream


class StreamFaultProxy(_Proxy):
    """``path`` (a unix socket this proxy listens on) -> ``upstream`` (a unix socket)."""

    def __init__(self, path: Path, upstream: str) -> None:
        self.path = path
        self._upstream = upstream
        self._stalled = threading.Event()
        self._blind = threading.Event()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(path))
        listener.listen(64)
        super().__init__(listener)

    def stall(self) -> None:
        self._stalled.set()
        for p in self.live():
            p.stalled.set()

    def heal(self) -> None:
        self._stalled.clear()

    def blind_docker_events(self, on: bool) -> None:
        if on:
            self._blind.set()
        else:
            self._blind.clear()

    def close(self) -> None:
        super().close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def _connect_upstream(self) -> socket.socket:
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            upstream.connect(self._upstream)
        except OSError:
            upstream.close()
            raise
        return upstream

    def _pipe(self, conn: socket.socket, upstream: socket.socket) -> _Pipe:
        pipe = _Pipe(conn, upstream, self._rewrite)
        if self._stalled.is_set():
            pipe.stalled.set()
        return pipe

    def _rewrite(self, data: bytes) -> bytes:
        if not self._blind.is_set():
            return data
        return _EVENTS_REQUEST.sub(rb"\1" + _NO_EVENTS, data)
