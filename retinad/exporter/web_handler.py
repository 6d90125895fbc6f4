"""HTTP requests of the web server: routing, limits and auth per request, /metrics.

One ``Handler`` subclass per server configuration carries its ``App`` (the web config
watcher, the metrics source, the limits); each connection's thread runs it over
HTTP/1.1 keep-alive. What the metrics are is the ``MetricsSource``'s business.
"""

from __future__ import annotations

import gzip
import html
import http.server
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import ClassVar, Protocol
from urllib.parse import parse_qs, urlsplit

import retinad
from retinad.exporter.web_auth import BasicAuth, san_allowed
from retinad.exporter.web_limits import InFlight, RateLimiter
from retinad.exporter.web_listen import join_address
from retinad.exporter.webconfig import WebConfigWatcher

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


class App:
    """Everything a request needs, shared by every connection of one WebServer."""

    def __init__(
        self,
        *,
        watcher: WebConfigWatcher,
        source: MetricsSource,
        telemetry_path: str,
        in_flight: InFlight,
        renders: InFlight,
        readiness: Readiness,
        logger: logging.Logger,
    ) -> None:
        self.watcher, self.source, self.logger = watcher, source, logger
        self.telemetry_path, self.in_flight = telemetry_path, in_flight
        self.renders, self.readiness = renders, readiness
        self.auth = BasicAuth()
        self.rate = RateLimiter()
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


def handler_class(app: App) -> type[Handler]:
    return type("Handler", (Handler,), {"app": app})


class Handler(http.server.BaseHTTPRequestHandler):
    """One connection's requests; ``app`` is set on a per-server subclass."""

    app: ClassVar[App]
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
            and not san_allowed(self.connection, config.tls.client_allowed_sans)
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
        if accepts_gzip(self.headers.get("Accept-Encoding")):
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
        return join_address(self.client_address[0], self.client_address[1])

    def version_string(self) -> str:
        """The Server header: "retinad/<version>", without Python's version."""
        return self.server_version

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Requests are not logged one by one; refusals and errors are, by the handler."""

    def log_message(self, format: str, *args: object) -> None:
        """http.server's own complaints (bad request line, timeout) are client trouble."""
        self.app.logger.debug("from %s: %s", self._remote(), format % args)


def accepts_gzip(header: str | None) -> bool:
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
