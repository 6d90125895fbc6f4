"""The HTTP side of the exporter: the server's lifecycle (start, reconfigure, stop), its
accept loops and each connection's TLS handshake.

The jobs around it live beside it: ``web_listen`` binds addresses, ``web_handler``
routes requests and serves /metrics, ``web_auth`` checks basic auth and client SANs,
``web_limits`` counts scrapes in flight and the rate limit, and ``webconfig`` reads the
web config file. This module keeps the names other code imports.

It follows node_exporter and exporter-toolkit: repeatable listen addresses (":port" is
every address, dual-stack where the host has IPv6), ``collect[]``/``exclude[]`` filters,
a concurrent-scrape limit answered with 503, and the exporter-toolkit web config
(``webconfig.py``) re-read on every request so certificates and passwords change without
a restart. What the metrics are is the ``MetricsSource``'s business, not this module's.

Each listener has one thread blocked in ``accept()``; each connection gets its own thread,
which does the TLS handshake (so a slow client never holds up the accept loop) and then
serves HTTP/1.1 keep-alive requests. Where retinad differs from exporter-toolkit:

* ``client_allowed_sans``: a verified client certificate without an allowed SAN gets a
  403 for each request instead of a failed handshake (Python's ``ssl`` has no hook to
  abort a handshake after verification).
* HTTP/2 is never offered; ``http_server_config.http2`` is accepted and ignored.
* A web config that becomes invalid while running is logged and the last good one stays
  in force (exporter-toolkit answers 500 until it is fixed).

``/-/healthy`` and ``/-/ready`` answer as Prometheus's do (behind the same TLS and auth),
and ``reconfigure`` applies new ``[web]`` settings without a moment with no listener.
"""

from __future__ import annotations

import contextlib
import http.server
import logging
import socket
import ssl
import threading
from collections.abc import Mapping
from typing import cast

from retinad.config.schema import WebSettings
from retinad.errors import WebConfigError
from retinad.exporter.web_handler import (
    HEALTHY_PATH,
    LANDING_PAGE,
    READY_PATH,
    App,
    Handler,
    MetricsSource,
    Readiness,
    handler_class,
)
from retinad.exporter.web_limits import InFlight
from retinad.exporter.web_listen import (
    PLAIN_HTTP_TO_TLS,
    Listener,
    join_address,
    linger,
    open_listener,
    send_raw,
)
from retinad.exporter.webconfig import WebConfigWatcher

__all__ = [
    "HEALTHY_PATH",
    "IO_TIMEOUT_SECONDS",
    "LANDING_PAGE",
    "READY_PATH",
    "MetricsSource",
    "Readiness",
    "WebServer",
    "open_listener",
]

IO_TIMEOUT_SECONDS = 60.0
"""How long a connection may stay silent (handshake, request or keep-alive idle)."""


class WebServer:
    """Serves the landing page, /-/healthy, /-/ready and the telemetry path.

    ``start`` binds; ``reconfigure`` applies new ``[web]`` settings in place: the new web
    config is loaded and every new address bound *before* anything changes, addresses
    kept from the old settings keep their socket (no moment without a listener, no
    second bind of the same port), and only then does the server switch. Any error
    leaves the running server exactly as it was.
    """

    def __init__(
        self,
        *,
        settings: WebSettings,
        source: MetricsSource,
        logger: logging.Logger,
        readiness: Readiness | None = None,
    ) -> None:
        self._settings, self._source, self._logger = settings, source, logger
        self._readiness: Readiness = readiness or (lambda: True)
        self._listeners: list[Listener] = []
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._app: App | None = None
        self._handler: type[Handler] | None = None
        self._renders = InFlight(0)
        """Requests in progress on any connection: stop() waits for them to finish."""

    @property
    def settings(self) -> WebSettings:
        """The settings this server runs with now (the last that applied)."""
        return self._settings

    @property
    def bound_addresses(self) -> list[tuple[str, int]]:
        """The (host, port) each listener is bound to, the real port when 0 was asked;
        empty before start() and after stop()."""
        with self._lock:
            return [lst.bound for lst in self._listeners]

    def start(self) -> None:
        """Load the web config, bind every address, serve each in a daemon thread.

        Raises WebConfigError for a bad web config and RetinadError naming the address
        when one cannot be bound; then nothing stays bound.
        """
        if self._app is not None:
            raise RuntimeError("WebServer.start() called twice")
        app, listeners = self._prepare(self._settings, keep={})
        self._switch(self._settings, app, listeners)

    def reconfigure(self, settings: WebSettings) -> None:
        """Serve with ``settings`` from now on, or raise and change nothing (see class)."""
        if self._app is None or self._stopping.is_set():
            raise RuntimeError("WebServer.reconfigure() before start() or after stop()")
        with self._lock:
            keep = {lst.address: lst for lst in self._listeners}
        app, listeners = self._prepare(settings, keep=keep)
        self._switch(settings, app, listeners)

    def _prepare(
        self, settings: WebSettings, *, keep: Mapping[str, Listener]
    ) -> tuple[App, list[Listener]]:
        """The new app and listeners, everything that can fail done; nothing switched."""
        try:
            watcher = WebConfigWatcher(settings.config_file, logger=self._logger)
        except WebConfigError as err:
            raise WebConfigError(f"[web].config_file: {err}") from err
        app = App(
            watcher=watcher,
            source=self._source,
            telemetry_path=settings.telemetry_path,
            in_flight=InFlight(settings.max_requests),
            renders=self._renders,
            readiness=self._readiness,
            logger=self._logger,
        )
        listeners: list[Listener] = []
        fresh: list[Listener] = []
        try:
            for addr in settings.listen_address:
                if addr in keep:
                    listeners.append(keep[addr])
                    continue
                lst = Listener(addr, open_listener(addr))
                fresh.append(lst)
                listeners.append(lst)
        except BaseException:
            for lst in fresh:
                lst.sock.close()
            raise
        return app, listeners

    def _switch(self, settings: WebSettings, app: App, listeners: list[Listener]) -> None:
        old_tls = self._app is not None and self._app.watcher.tls
        with self._lock:
            dropped = [lst for lst in self._listeners if lst not in listeners]
            self._settings, self._app = settings, app
            self._handler = handler_class(app)
            self._listeners = listeners
        scheme = "https" if app.watcher.tls else "http"
        for lst in listeners:
            if lst.thread is None:
                lst.thread = threading.Thread(
                    target=self._accept_loop,
                    args=(lst,),
                    name=f"web-accept-{lst.bound[1]}",
                    daemon=True,
                )
                lst.thread.start()
                self._logger.info("listening on %s", f"{scheme}://{join_address(*lst.bound)}")
            elif old_tls != app.watcher.tls:
                self._logger.info("now serving %s://%s", scheme, join_address(*lst.bound))
        for lst in dropped:
            self._close_listener(lst)
            self._logger.info("no longer listening on %s", lst.address)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting, let scrapes in flight finish (up to ``timeout``), then close
        every connection; safe to call more than once. After it returns no request of
        this server touches the metrics source any more."""
        self._stopping.set()
        with self._lock:
            listeners, self._listeners = self._listeners, []
        for lst in listeners:
            self._close_listener(lst)
        with self._lock:
            connections = list(self._connections)
        for conn in connections:  # no further request is read; a response in progress
            with contextlib.suppress(OSError):  # is still written (bypassing TLS shutdown)
                socket.socket.shutdown(conn, socket.SHUT_RD)
        if not self._renders.wait_idle(timeout):
            self._logger.warning("stopping with a scrape still in flight after %.0fs", timeout)
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                socket.socket.shutdown(conn, socket.SHUT_RDWR)  # its thread then closes it

    def healthy(self) -> bool:
        """Whether every accept loop is still running."""
        with self._lock:
            threads = [lst.thread for lst in self._listeners]
        return bool(threads) and all(t is not None and t.is_alive() for t in threads)

    @staticmethod
    def _close_listener(lst: Listener) -> None:
        lst.closing.set()
        with contextlib.suppress(OSError):
            lst.sock.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
        if lst.thread is not None and lst.thread is not threading.current_thread():
            lst.thread.join(timeout=5)
        lst.sock.close()

    def _accept_loop(self, lst: Listener) -> None:
        while not (self._stopping.is_set() or lst.closing.is_set()):
            try:
                conn, addr = lst.sock.accept()
            except OSError as err:
                if self._stopping.is_set() or lst.closing.is_set():
                    return
                self._logger.error("accept failed on %s: %s", lst.address, err)
                self._stopping.wait(0.1)  # EMFILE and friends: do not spin
                continue
            with self._lock:
                handler = self._handler
            assert handler is not None
            threading.Thread(
                target=self._serve_connection, args=(conn, addr, handler), daemon=True
            ).start()

    def _serve_connection(
        self, conn: socket.socket, addr: tuple[str, int], handler: type[Handler]
    ) -> None:
        remote = join_address(addr[0], addr[1])
        conn.settimeout(IO_TIMEOUT_SECONDS)
        watcher = handler.app.watcher
        try:
            if watcher.tls:
                ctx = watcher.current().ssl_context
                if ctx is None:  # cannot happen: the watcher keeps TLS on once it is on
                    raise RuntimeError("TLS server without an SSL context")
                conn = ctx.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
            with self._lock:
                self._connections.add(conn)
            if self._stopping.is_set():
                return
            if isinstance(conn, ssl.SSLSocket):
                try:
                    conn.do_handshake()
                except (ssl.SSLError, OSError) as err:
                    self._logger.debug("refused %s: TLS handshake failed: %s", remote, err)
                    if getattr(err, "reason", None) == "HTTP_REQUEST":
                        send_raw(conn, PLAIN_HTTP_TO_TLS)
                    linger(conn)
                    return
            handler(conn, addr, cast(http.server.HTTPServer, None))
        except (ConnectionError, TimeoutError, ssl.SSLError) as err:
            self._logger.debug("connection from %s ended: %s", remote, err)
        except Exception:
            self._logger.exception("error serving %s", remote)
        finally:
            with self._lock:
                self._connections.discard(conn)
            conn.close()
