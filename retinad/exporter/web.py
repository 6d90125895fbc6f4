"""The HTTP side of the exporter: listeners, TLS, basic auth, /metrics and the landing page.

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

import base64
import binascii
import contextlib
import errno
import gzip
import hashlib
import html
import http.server
import ipaddress
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import ClassVar, Protocol, cast
from urllib.parse import parse_qs, urlsplit

import bcrypt

import retinad
from retinad.config.load import parse_listen_address
from retinad.config.schema import WebSettings
from retinad.errors import RetinadError, WebConfigError
from retinad.exporter.webconfig import RateLimit, WebConfigWatcher

IO_TIMEOUT_SECONDS = 60.0
"""How long a connection may stay silent (handshake, request or keep-alive idle)."""
_TEXT = "text/plain; charset=utf-8"
HEALTHY_PATH = "/-/healthy"
"""200 while the process serves HTTP (Prometheus's /-/healthy)."""
READY_PATH = "/-/ready"
"""200 once every enabled plugin is attached, else 503 (Prometheus's /-/ready). Both sit
behind the web config's TLS, rate limit and basic auth, as every Prometheus endpoint does."""


class MetricsSource(Protocol):
    """What the server asks for metrics; the daemon's collector registry implements it."""

    def collector_names(self) -> Sequence[str]: ...

    def render(
        self, *, collect: Sequence[str], exclude: Sequence[str], accept: str | None
    ) -> tuple[bytes, str]:
        """Exposition body and its content type. Raises ValueError (message for a 400) for
        an unknown collector name."""
        ...


Readiness = Callable[[], bool]
"""Whether every enabled plugin is attached (the same condition as systemd's READY=1)."""


class _Listener:
    """One bound address and the thread accepting on it."""

    def __init__(self, address: str, sock: socket.socket) -> None:
        self.address, self.sock = address, sock
        self.closing = threading.Event()
        self.thread: threading.Thread | None = None

    @property
    def bound(self) -> tuple[str, int]:
        return cast(tuple[str, int], self.sock.getsockname()[:2])


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
        self._listeners: list[_Listener] = []
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._app: _App | None = None
        self._handler: type[_Handler] | None = None
        self._renders = _InFlight(0)
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
        self, settings: WebSettings, *, keep: Mapping[str, _Listener]
    ) -> tuple[_App, list[_Listener]]:
        """The new app and listeners, everything that can fail done; nothing switched."""
        try:
            watcher = WebConfigWatcher(settings.config_file, logger=self._logger)
        except WebConfigError as err:
            raise WebConfigError(f"[web].config_file: {err}") from err
        app = _App(
            watcher=watcher,
            source=self._source,
            telemetry_path=settings.telemetry_path,
            in_flight=_InFlight(settings.max_requests),
            renders=self._renders,
            readiness=self._readiness,
            logger=self._logger,
        )
        listeners: list[_Listener] = []
        fresh: list[_Listener] = []
        try:
            for addr in settings.listen_address:
                if addr in keep:
                    listeners.append(keep[addr])
                    continue
                lst = _Listener(addr, open_listener(addr))
                fresh.append(lst)
                listeners.append(lst)
        except BaseException:
            for lst in fresh:
                lst.sock.close()
            raise
        return app, listeners

    def _switch(self, settings: WebSettings, app: _App, listeners: list[_Listener]) -> None:
        old_tls = self._app is not None and self._app.watcher.tls
        with self._lock:
            dropped = [lst for lst in self._listeners if lst not in listeners]
            self._settings, self._app = settings, app
            self._handler = _handler_class(app)
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
                self._logger.info("listening on %s", f"{scheme}://{_join(*lst.bound)}")
            elif old_tls != app.watcher.tls:
                self._logger.info("now serving %s://%s", scheme, _join(*lst.bound))
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
    def _close_listener(lst: _Listener) -> None:
        lst.closing.set()
        with contextlib.suppress(OSError):
            lst.sock.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
        if lst.thread is not None and lst.thread is not threading.current_thread():
            lst.thread.join(timeout=5)
        lst.sock.close()

    def _accept_loop(self, lst: _Listener) -> None:
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
        self, conn: socket.socket, addr: tuple[str, int], handler: type[_Handler]
    ) -> None:
        remote = _join(addr[0], addr[1])
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
                        _send_raw(conn, _PLAIN_HTTP_TO_TLS)
                    _linger(conn)
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


_PLAIN_HTTP_TO_TLS = (
    b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n"
)
"""Go's net/http answer to plain HTTP on a TLS port, so curl users see what is wrong."""


def _send_raw(conn: socket.socket, data: bytes) -> None:
    """Write past the TLS layer, on the bare TCP socket."""
    with contextlib.suppress(OSError):
        socket.socket.sendall(conn, data)


def _linger(conn: socket.socket) -> None:
    """Close gracefully after a refused handshake: closing with the client's unread bytes
    in the buffer sends a TCP reset, which can destroy the TLS alert before the client
    reads it. So stop writing, drain briefly, and let the client hang up first."""
    deadline = time.monotonic() + 2.0
    with contextlib.suppress(OSError):
        socket.socket.shutdown(conn, socket.SHUT_WR)
        while (left := deadline - time.monotonic()) > 0:
            conn.settimeout(left)
            if not socket.socket.recv(conn, 4096):
                break


def open_listener(addr: str) -> socket.socket:
    """A listening socket for "host:port", "[v6]:port" or ":port" (port 0: any free port).

    ":port" binds "::" with IPV6_V6ONLY off, so one socket takes IPv4 and IPv6, and falls
    back to 0.0.0.0 on a host without IPv6.
    """
    try:
        host, port = parse_listen_address(addr, allow_port_zero=True)
    except ValueError as err:
        raise RetinadError(f'cannot listen on "{addr}": {err}') from None
    try:
        if host:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
            family, sockaddr = infos[0][0], infos[0][4]
            return _bind(family, sockaddr)
        try:
            return _bind(socket.AF_INET6, ("::", port), dual_stack=True)
        except OSError as err:
            if err.errno in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL, errno.EPROTONOSUPPORT):
                return _bind(socket.AF_INET, ("0.0.0.0", port))
            raise
    except socket.gaierror as err:
        reason = (err.strerror or str(err)).lower()
        raise RetinadError(f'cannot listen on "{addr}": cannot resolve "{host}": {reason}') from err
    except OSError as err:
        reason = (err.strerror or str(err)).lower()
        raise RetinadError(f'cannot listen on "{addr}": {reason}') from err


def _bind(family: int, sockaddr: tuple[object, ...], *, dual_stack: bool = False) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if dual_stack:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(sockaddr)
        sock.listen(128)
    except BaseException:
        sock.close()
        raise
    return sock


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# --- request handling ----------------------------------------------------------------------


class _App:
    """Everything a request needs, shared by every connection of one WebServer."""

    def __init__(
        self,
        *,
        watcher: WebConfigWatcher,
        source: MetricsSource,
        telemetry_path: str,
        in_flight: _InFlight,
        renders: _InFlight,
        readiness: Readiness,
        logger: logging.Logger,
    ) -> None:
        self.watcher, self.source, self.logger = watcher, source, logger
        self.telemetry_path, self.in_flight = telemetry_path, in_flight
        self.renders, self.readiness = renders, readiness
        self.auth = _BasicAuth()
        self.rate = _RateLimiter()
        link = html.escape(telemetry_path.lstrip("/"), quote=True)
        self.landing = LANDING_PAGE.format(link=link, version=retinad.__version__).encode()


LANDING_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>retinad</title>
</head>
<body>
<h1>retinad</h1>
<p>eBPF network observability for Linux hosts.</p>
<ul>
<li><a href="{link}">Metrics</a></li>
</ul>
<p>Version: {version}</p>
</body>
</html>
"""
"""Links are relative, so the page works behind a reverse proxy under a path prefix."""


def _handler_class(app: _App) -> type[_Handler]:
    return type("Handler", (_Handler,), {"app": app})


class _Handler(http.server.BaseHTTPRequestHandler):
    """One connection's requests; ``app`` is set on a per-server subclass."""

    app: ClassVar[_App]
    protocol_version = "HTTP/1.1"
    server_version = f"retinad/{retinad.__version__}"
    _extra: Sequence[tuple[str, str]] = ()

    def do_HEAD(self) -> None:
        """As GET, without the body (the headers, Content-Length included, are the same)."""
        self.do_GET()

    def do_GET(self) -> None:
        """Serve one request; counted in ``renders`` until its reply is written, so that
        stop() neither cuts a reply short nor lets a plugin go while it is read."""
        self.app.renders.acquire()
        try:
            self._get()
        finally:
            self.app.renders.release()

    def _get(self) -> None:
        app = self.app
        config = app.watcher.current()
        self._extra = config.http.headers
        if (
            config.tls
            and config.tls.client_allowed_sans
            and not _san_allowed(self.connection, config.tls.client_allowed_sans)
        ):
            self._refuse(403, "Forbidden", "client certificate has no allowed SAN")
            return
        if not app.rate.allow(config.rate_limit):
            self._refuse(429, "Too Many Requests", "rate limit")
            return
        users = config.basic_auth_users
        if users and not app.auth.check(users, self.headers.get("Authorization")):
            self._refuse(401, "Unauthorized", "basic auth", [("WWW-Authenticate", "Basic")])
            return
        url = urlsplit(self.path)
        if url.path == app.telemetry_path:
            self._metrics(url.query)
        elif url.path == HEALTHY_PATH:
            self._reply(200, b"retinad is Healthy.\n", _TEXT)
        elif url.path == READY_PATH:
            if app.readiness():
                self._reply(200, b"retinad is Ready.\n", _TEXT)
            else:
                self._refuse(503, "Service Unavailable", "not ready")
        elif url.path == "/":
            self._reply(200, app.landing, "text/html; charset=utf-8")
        else:
            self._refuse(404, "404 page not found", "no such path", text_only=True)

    def _metrics(self, query: str) -> None:
        app = self.app
        params = parse_qs(query, keep_blank_values=True)
        collect, exclude = params.get("collect[]", []), params.get("exclude[]", [])
        if collect and exclude:
            self._refuse(400, "Combined collect and exclude queries are not allowed.", "filter")
            return
        if not app.in_flight.acquire():
            limit = app.in_flight.limit
            msg = f"Limit of concurrent requests reached ({limit}), try again later."
            self._refuse(503, msg, "max_requests")
            return
        try:
            body, content_type = app.source.render(
                collect=collect, exclude=exclude, accept=self.headers.get("Accept")
            )
        except ValueError as err:
            self._refuse(400, f"Couldn't create filtered metrics handler: {err}", "filter")
            return
        except Exception as err:
            app.logger.exception("error rendering metrics for %s", self._remote())
            msg = f"An error has occurred while serving metrics:\n\n{err}"
            self._reply(500, f"{msg}\n".encode(), _TEXT)
            return
        finally:
            app.in_flight.release()
        headers: list[tuple[str, str]] = []
        if _accepts_gzip(self.headers.get("Accept-Encoding")):
            body = gzip.compress(body)
            headers.append(("Content-Encoding", "gzip"))
        self._reply(200, body, content_type, headers)

    def _refuse(
        self,
        status: int,
        text: str,
        why: str,
        headers: Iterable[tuple[str, str]] = (),
        *,
        text_only: bool = False,
    ) -> None:
        self.app.logger.debug(
            "refused %s %s from %s: %d (%s)",
            self.command,
            self.path,
            self._remote(),
            status,
            why,
        )
        extra = [*headers, ("X-Content-Type-Options", "nosniff")]
        self._reply(status, f"{text}\n".encode(), _TEXT, extra)

    def _reply(
        self,
        status: int,
        body: bytes,
        content_type: str,
        headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        self.send_response(status)
        sent = {name.lower() for name, _ in self._extra}
        for name, value in self._extra:
            self.send_header(name, value)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers:
            if name.lower() not in sent:
                self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _remote(self) -> str:
        return _join(self.client_address[0], self.client_address[1])

    def version_string(self) -> str:
        """The Server header: "retinad/<version>", without Python's version."""
        return self.server_version

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Requests are not logged one by one; refusals and errors are, by the handler."""

    def log_message(self, format: str, *args: object) -> None:
        """http.server's own complaints (bad request line, timeout) are client trouble."""
        self.app.logger.debug("from %s: %s", self._remote(), format % args)


def _accepts_gzip(header: str | None) -> bool:
    for part in (header or "").split(","):
        name, _, params = part.partition(";")
        if name.strip().lower() == "gzip":
            q = params.strip().removeprefix("q=")
            return not (params.strip().startswith("q=") and _float(q) == 0)
    return False


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return 1.0


def _san_allowed(conn: socket.socket, allowed: Sequence[str]) -> bool:
    """Whether the verified client certificate has one of ``allowed`` as a SAN (DNS, IP,
    e-mail or URI, compared exactly as exporter-toolkit does; IPs in canonical form)."""
    cert = conn.getpeercert() if isinstance(conn, ssl.SSLSocket) else None
    if not cert:
        return False
    wanted = set(allowed)
    for kind, value in cast(Sequence[tuple[str, str]], cert.get("subjectAltName", ())):
        if kind == "IP Address":
            try:
                value = str(ipaddress.ip_address(value.strip()))
            except ValueError:
                continue
        if value in wanted:
            return True
    return False


class _InFlight:
    """promhttp's MaxRequestsInFlight: a non-blocking counter; limit 0 means no limit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._count = 0
        self._lock = threading.Condition()

    def acquire(self) -> bool:
        with self._lock:
            if self.limit and self._count >= self.limit:
                return False
            self._count += 1
            return True

    def release(self) -> None:
        with self._lock:
            self._count -= 1
            if not self._count:
                self._lock.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until nothing is in flight; False if ``timeout`` passed first."""
        with self._lock:
            return self._lock.wait_for(lambda: self._count == 0, timeout)


class _RateLimiter:
    """exporter-toolkit's ``rate_limit``: a token bucket, one token per interval, holding
    at most ``burst`` (so burst 0 refuses everything, as Go's rate.Limiter does)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._config = RateLimit()
        self._tokens = 0.0
        self._at = 0.0

    def allow(self, config: RateLimit) -> bool:
        if config.interval_seconds <= 0:
            return True
        with self._lock:
            now = time.monotonic()
            if config != self._config:
                self._config, self._tokens, self._at = config, float(config.burst), now
            refill = (now - self._at) / config.interval_seconds
            self._tokens = min(float(config.burst), self._tokens + refill)
            self._at = now
            if self._tokens >= 1:
                self._tokens -= 1
                return True
            return False


class _BasicAuth:
    """bcrypt basic auth with exporter-toolkit's cache: a successful (user, password) check
    against a given hash is remembered, so scrapes do not pay bcrypt every time; a changed
    hash is a new key. Failures are never cached and are serialized, like the bcrypt
    calls themselves, which also slows guessing."""

    _CACHE_SIZE = 256

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ok: set[bytes] = set()
        self._dummy: bytes | None = None

    def check(self, users: Mapping[str, str], header: str | None) -> bool:
        credentials = _parse_basic(header)
        if credentials is None:
            return False
        user, password = credentials
        hashed = users.get(user)
        key = hashlib.sha256(b"\0".join((user.encode(), (hashed or "").encode(), password)))
        digest = key.digest()
        if hashed is not None and digest in self._ok:
            return True
        with self._lock:
            if hashed is not None:
                against = hashed.encode()
            else:  # pay the same bcrypt cost as for a real user: no enumeration by timing
                if self._dummy is None:
                    self._dummy = bcrypt.hashpw(b"not a user", bcrypt.gensalt(10))
                against = self._dummy
            try:
                ok = bcrypt.checkpw(password, against)
            except ValueError:  # a password over 72 bytes
                ok = False
            if ok and hashed is not None:
                if len(self._ok) >= self._CACHE_SIZE:
                    self._ok.clear()
                self._ok.add(digest)
                return True
        return False


def _parse_basic(header: str | None) -> tuple[str, bytes] | None:
    scheme, _, encoded = (header or "").strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = decoded.partition(b":")
    if not sep:
        return None
    try:
        return user.decode("utf-8"), password
    except UnicodeDecodeError:
        return None
