"""The exporter's HTTP side, served for real on loopback and spoken to over real HTTP/TLS.

``TwoCollectors`` is a genuine ``MetricsSource``: it renders with prometheus_client from a
registry holding the collectors a scrape asked for, and records what it was asked.
"""

from __future__ import annotations

import base64
import gzip
import http.client
import logging
import re
import socket
import ssl
import threading
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

import bcrypt
import pytest
from cryptography import x509
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

import retinad
from retinad.config.schema import WebSettings
from retinad.errors import RetinadError, WebConfigError
from retinad.exporter.web import WebServer
from tests.unit.test_webconfig import PKI, Issued

LOGGER = "test.web"
PW1, PW2 = "first-password", "second-password"
HASH1 = bcrypt.hashpw(PW1.encode(), bcrypt.gensalt(4)).decode()
HASH2 = bcrypt.hashpw(PW2.encode(), bcrypt.gensalt(4)).decode()


class _Named(Collector):
    def __init__(self, name: str, value: float) -> None:
        self.name, self.value = name, value

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(f"test_{self.name}", f"The {self.name} collector.", self.value)


class TwoCollectors:
    """A real MetricsSource with collectors "alpha" and "beta"."""

    def __init__(self) -> None:
        self.collectors = {"alpha": _Named("alpha", 1), "beta": _Named("beta", 2)}
        self.calls: list[tuple[list[str], list[str], str | None]] = []

    def collector_names(self) -> Sequence[str]:
        return list(self.collectors)

    def render(
        self, *, collect: Sequence[str], exclude: Sequence[str], accept: str | None
    ) -> tuple[bytes, str]:
        self.calls.append((list(collect), list(exclude), accept))
        for name in [*collect, *exclude]:
            if name not in self.collectors:
                raise ValueError(f'unknown collector "{name}"')
        registry = CollectorRegistry()
        for name, collector in self.collectors.items():
            if (not collect or name in collect) and name not in exclude:
                registry.register(collector)
        return generate_latest(registry), CONTENT_TYPE_LATEST


ALPHA = b"# HELP test_alpha The alpha collector.\n# TYPE test_alpha gauge\ntest_alpha 1.0\n"
BETA = b"# HELP test_beta The beta collector.\n# TYPE test_beta gauge\ntest_beta 2.0\n"


class BlockingSource(TwoCollectors):
    """Renders only once ``release`` is set, so scrapes can be held in flight."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def render(
        self, *, collect: Sequence[str], exclude: Sequence[str], accept: str | None
    ) -> tuple[bytes, str]:
        self.entered.set()
        assert self.release.wait(10)
        return super().render(collect=collect, exclude=exclude, accept=accept)


class FailingSource(TwoCollectors):
    def render(
        self, *, collect: Sequence[str], exclude: Sequence[str], accept: str | None
    ) -> tuple[bytes, str]:
        raise RuntimeError("map read failed")


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


@contextmanager
def serving(
    *,
    listen: Sequence[str] = ("127.0.0.1:0",),
    config_file: str = "",
    max_requests: int = 40,
    source: TwoCollectors | None = None,
) -> Iterator[WebServer]:
    settings = WebSettings(
        listen_address=list(listen), config_file=config_file, max_requests=max_requests
    )
    server = WebServer(
        settings=settings, source=source or TwoCollectors(), logger=logging.getLogger(LOGGER)
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


def get(
    server: WebServer | tuple[str, int],
    path: str = "/metrics",
    *,
    headers: dict[str, str] | None = None,
    context: ssl.SSLContext | None = None,
    auth: tuple[str, str] | None = None,
) -> Response:
    host, port = server.bound_addresses[0] if isinstance(server, WebServer) else server
    conn: http.client.HTTPConnection
    if context is None:
        conn = http.client.HTTPConnection(host, port, timeout=10)
    else:
        conn = http.client.HTTPSConnection(host, port, timeout=10, context=context)
    sent = dict(headers or {})
    if auth:
        sent["Authorization"] = "Basic " + base64.b64encode(":".join(auth).encode()).decode()
    with closing(conn):
        conn.request("GET", path, headers=sent)
        resp = conn.getresponse()
        return Response(resp.status, dict(resp.getheaders()), resp.read())


def plain_headers(body: bytes, content_type: str = "text/plain; charset=utf-8") -> dict[str, str]:
    """What a response carries besides Date and Server, which vary."""
    return {"Content-Type": content_type, "Content-Length": str(len(body))}


def without_date_server(headers: dict[str, str]) -> dict[str, str]:
    assert headers.pop("Server") == f"retinad/{retinad.__version__}"
    assert headers.pop("Date").endswith(" GMT")
    return headers


# --- plain HTTP ------------------------------------------------------------------------------


def test_plain_scrape_passes_no_filter_and_the_accept_header() -> None:
    source = TwoCollectors()
    with serving(source=source) as server:
        r = get(server, headers={"Accept": "text/plain;version=0.0.4"})
    assert r.status == 200
    assert r.body == ALPHA + BETA
    assert without_date_server(r.headers) == plain_headers(r.body, CONTENT_TYPE_LATEST)
    assert source.calls == [([], [], "text/plain;version=0.0.4")]


def test_gzip_when_the_client_accepts_it() -> None:
    with serving() as server:
        r = get(server, headers={"Accept-Encoding": "deflate, gzip;q=0.9"})
        refused = get(server, headers={"Accept-Encoding": "gzip;q=0"})
    assert r.status == 200 and r.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(r.body) == ALPHA + BETA
    assert "Content-Encoding" not in refused.headers and refused.body == ALPHA + BETA


def test_landing_page() -> None:
    with serving() as server:
        r = get(server, "/")
    expected = (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n'
        "<head>\n"
        '<meta charset="utf-8">\n'
        "<title>retinad</title>\n"
        "</head>\n"
        "<body>\n"
        "<h1>retinad</h1>\n"
        "<p>eBPF network observability for Linux hosts.</p>\n"
        "<ul>\n"
        '<li><a href="metrics">Metrics</a></li>\n'
        "</ul>\n"
        f"<p>Version: {retinad.__version__}</p>\n"
        "</body>\n"
        "</html>\n"
    ).encode()
    assert r.status == 200 and r.body == expected
    assert without_date_server(r.headers) == plain_headers(expected, "text/html; charset=utf-8")


def test_other_paths_are_404() -> None:
    with serving() as server:
        r = get(server, "/metricsx")
    assert r.status == 404 and r.body == b"404 page not found\n"
    assert without_date_server(r.headers) == {
        **plain_headers(r.body),
        "X-Content-Type-Options": "nosniff",
    }


@pytest.mark.parametrize(
    ("query", "calls", "body"),
    [
        ("collect[]=alpha", [(["alpha"], [], None)], ALPHA),
        ("collect[]=alpha&collect[]=beta", [(["alpha", "beta"], [], None)], ALPHA + BETA),
        ("exclude[]=alpha", [([], ["alpha"], None)], BETA),
    ],
)
def test_collect_and_exclude_reach_the_source(
    query: str, calls: list[tuple[list[str], list[str], None]], body: bytes
) -> None:
    source = TwoCollectors()
    with serving(source=source) as server:
        r = get(server, f"/metrics?{query}")
    assert (r.status, r.body, source.calls) == (200, body, calls)


def test_collect_and_exclude_together_are_400() -> None:
    source = TwoCollectors()
    with serving(source=source) as server:
        r = get(server, "/metrics?collect[]=alpha&exclude[]=beta")
    assert r.status == 400
    assert r.body == b"Combined collect and exclude queries are not allowed.\n"
    assert source.calls == []


def test_unknown_collector_is_400_with_the_sources_message() -> None:
    with serving() as server:
        r = get(server, "/metrics?collect[]=gamma")
    assert r.status == 400
    assert r.body == b'Couldn\'t create filtered metrics handler: unknown collector "gamma"\n'


def test_render_failure_is_500_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger=LOGGER), serving(source=FailingSource()) as s:
        r = get(s)
    assert r.status == 500
    assert r.body == b"An error has occurred while serving metrics:\n\nmap read failed\n"
    [record] = caplog.records
    assert re.fullmatch(r"error rendering metrics for 127\.0\.0\.1:\d+", record.getMessage())
    assert record.exc_info is not None


def test_max_requests_answers_503_over_the_limit() -> None:
    source = BlockingSource()
    with serving(source=source, max_requests=1) as server:
        first: list[Response] = []
        t = threading.Thread(target=lambda: first.append(get(server)))
        t.start()
        assert source.entered.wait(10)
        over = get(server)
        source.release.set()
        t.join(10)
        after = get(server)
    assert over.status == 503
    assert over.body == b"Limit of concurrent requests reached (1), try again later.\n"
    assert [r.status for r in first] == [200] and after.status == 200


def test_landing_page_is_not_counted_by_max_requests() -> None:
    source = BlockingSource()
    with serving(source=source, max_requests=1) as server:
        t = threading.Thread(target=lambda: get(server))
        t.start()
        assert source.entered.wait(10)
        landing = get(server, "/")
        source.release.set()
        t.join(10)
    assert landing.status == 200


# --- listeners ---------------------------------------------------------------------------------


def test_port_in_use_names_the_address_and_leaves_nothing_bound(free_port: int) -> None:
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", free_port))
        taken.listen()
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            other = probe.getsockname()[1]
        server = WebServer(
            settings=WebSettings(listen_address=[f"127.0.0.1:{other}", f"127.0.0.1:{free_port}"]),
            source=TwoCollectors(),
            logger=logging.getLogger(LOGGER),
        )
        with pytest.raises(RetinadError) as info:
            server.start()
    assert str(info.value) == f'cannot listen on "127.0.0.1:{free_port}": address already in use'
    with socket.socket() as again:  # the first address was released
        again.bind(("127.0.0.1", other))


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("::1:0", "an IPv6 address must be in brackets, as [::1]:port"),
        ("127.0.0.1", "expected host:port or :port"),
    ],
)
def test_bad_listen_address(address: str, reason: str) -> None:
    server = WebServer(
        settings=WebSettings(listen_address=[address]),
        source=TwoCollectors(),
        logger=logging.getLogger(LOGGER),
    )
    with pytest.raises(RetinadError) as info:
        server.start()
    assert str(info.value) == f'cannot listen on "{address}": {reason}'


def test_unresolvable_listen_host() -> None:
    server = WebServer(
        settings=WebSettings(listen_address=["no-such-host.invalid:0"]),
        source=TwoCollectors(),
        logger=logging.getLogger(LOGGER),
    )
    with pytest.raises(RetinadError) as info:
        server.start()
    # the resolver's reason depends on the host (no such name, or no DNS at all)
    assert str(info.value).startswith(
        'cannot listen on "no-such-host.invalid:0": cannot resolve "no-such-host.invalid": '
    )


def test_ipv6_loopback() -> None:
    with serving(listen=["[::1]:0"]) as server:
        host, port = server.bound_addresses[0]
        r = get(server)
    assert host == "::1" and port > 0
    assert r.status == 200 and r.body == ALPHA + BETA


def test_port_only_listens_on_ipv4_and_ipv6() -> None:
    with serving(listen=[":0"]) as server:
        host, port = server.bound_addresses[0]
        v4 = get(("127.0.0.1", port))
        v6 = get(("::1", port))
    assert host == "::"
    assert (v4.status, v6.status) == (200, 200)


def test_several_addresses_each_serve() -> None:
    with serving(listen=["127.0.0.1:0", "[::1]:0"]) as server:
        results = [get(addr).status for addr in server.bound_addresses]
        assert server.healthy()
    assert results == [200, 200]


def test_stop_releases_the_port_and_is_idempotent() -> None:
    with serving() as server:
        port = server.bound_addresses[0][1]
        assert get(server).status == 200
        assert server.healthy()
    server.stop()
    assert not server.healthy() and server.bound_addresses == []
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    with serving(listen=[f"127.0.0.1:{port}"]) as again:
        assert get(again).status == 200


def test_stop_closes_idle_keep_alive_connections() -> None:
    with serving() as server:
        conn = http.client.HTTPConnection(*server.bound_addresses[0], timeout=10)
        conn.request("GET", "/")
        assert conn.getresponse().read().startswith(b"<!DOCTYPE html>")
    with closing(conn):
        assert conn.sock is not None
        assert conn.sock.recv(1) == b""  # the server hung up on stop()


# --- basic auth ----------------------------------------------------------------------------


def web_yml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "web.yml"
    path.write_text(text)
    return str(path)


def test_basic_auth(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = web_yml(tmp_path, f"basic_auth_users:\n  alice: {HASH1}\n")
    with caplog.at_level(logging.DEBUG, logger=LOGGER), serving(config_file=config) as server:
        ok = get(server, auth=("alice", PW1))
        cached = get(server, auth=("alice", PW1))
        wrong = get(server, auth=("alice", "nope"))
        unknown_user = get(server, auth=("mallory", PW1))
        missing = get(server)
        landing = get(server, "/")
    assert (ok.status, ok.body, cached.status) == (200, ALPHA + BETA, 200)
    for r in (wrong, unknown_user, missing, landing):
        assert r.status == 401 and r.body == b"Unauthorized\n"
        assert without_date_server(r.headers) == {
            **plain_headers(r.body),
            "WWW-Authenticate": "Basic",
            "X-Content-Type-Options": "nosniff",
        }
    refusals = [r.getMessage() for r in caplog.records if r.getMessage().startswith("refused")]
    assert len(refusals) == 4
    assert re.fullmatch(
        r"refused GET /metrics from 127\.0\.0\.1:\d+: 401 \(basic auth\)", refusals[0]
    )


def test_rate_limit_answers_429(tmp_path: Path) -> None:
    config = web_yml(tmp_path, "rate_limit:\n  interval: 1h\n  burst: 2\n")
    with serving(config_file=config) as server:
        statuses = [get(server, "/").status for _ in range(3)]
        over = get(server)
    assert statuses == [200, 200, 429]
    assert over.status == 429 and over.body == b"Too Many Requests\n"


def test_configured_headers_are_sent(tmp_path: Path) -> None:
    config = web_yml(
        tmp_path,
        "http_server_config:\n  headers:\n    X-Frame-Options: deny\n"
        "    Content-Security-Policy: default-src 'none'\n",
    )
    with serving(config_file=config) as server:
        r = get(server, "/")
        missing = get(server, "/nothing")
    for resp in (r, missing):
        assert resp.headers["X-Frame-Options"] == "deny"
        assert resp.headers["Content-Security-Policy"] == "default-src 'none'"


def test_password_change_without_restart(tmp_path: Path) -> None:
    config = web_yml(tmp_path, f"basic_auth_users:\n  alice: {HASH1}\n")
    with serving(config_file=config) as server:
        assert get(server, auth=("alice", PW1)).status == 200
        web_yml(tmp_path, f"basic_auth_users:\n  alice: {HASH2}\n")
        old, new = get(server, auth=("alice", PW1)), get(server, auth=("alice", PW2))
    assert (old.status, new.status) == (401, 200)


def test_config_broken_at_run_time_keeps_the_last_good_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = web_yml(tmp_path, f"basic_auth_users:\n  alice: {HASH1}\n")
    with caplog.at_level(logging.ERROR, logger=LOGGER), serving(config_file=config) as server:
        web_yml(tmp_path, "basic_auth_users:\n  alice: not-a-hash\n")
        statuses = [get(server, auth=("alice", PW1)).status for _ in range(3)]
        statuses.append(get(server).status)
    assert statuses == [200, 200, 200, 401]
    assert [r.getMessage() for r in caplog.records] == [
        f"web config not reloaded, keeping the previous one: {config}: basic_auth_users.alice: "
        "expected a bcrypt hash such as htpasswd -nBC 10 prints ($2y$10$ and 53 characters)"
    ]


def test_bad_config_at_start_raises(tmp_path: Path) -> None:
    config = web_yml(tmp_path, "basic_auth_users: {alice: x}\n")
    server = WebServer(
        settings=WebSettings(listen_address=["127.0.0.1:0"], config_file=config),
        source=TwoCollectors(),
        logger=logging.getLogger(LOGGER),
    )
    with pytest.raises(WebConfigError) as info:
        server.start()
    assert str(info.value) == (
        f"[web].config_file: {config}: basic_auth_users.alice: expected a bcrypt hash such as "
        "htpasswd -nBC 10 prints ($2y$10$ and 53 characters)"
    )
    assert server.bound_addresses == []


# --- TLS -----------------------------------------------------------------------------------


@pytest.fixture
def pki(tmp_path: Path) -> PKI:
    return PKI(tmp_path)


def client_context(ca: Issued, cert: Issued | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca.cert))
    if cert is not None:
        ctx.load_cert_chain(str(cert.cert), str(cert.key))
    return ctx


def served_serial(server: WebServer, ca: Issued) -> int:
    host, port = server.bound_addresses[0]
    with (
        socket.create_connection((host, port), timeout=10) as raw,
        client_context(ca).wrap_socket(raw, server_hostname=host) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def refusal(server: WebServer, ctx: ssl.SSLContext) -> str:
    """The TLS alert a client gets (TLS 1.3 reports a refused client certificate on the
    first read after the handshake)."""
    with pytest.raises(ssl.SSLError) as info:
        get(server, context=ctx)
    return str(info.value.reason)


def test_tls_scrape(pki: PKI, tmp_path: Path) -> None:
    ca = pki.ca("ca")
    server_cert = pki.issue(ca, "server")
    config = web_yml(
        tmp_path, "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
    )
    with serving(config_file=config) as server:
        r = get(server, context=client_context(ca))
        assert served_serial(server, ca) == server_cert.serial
        plain = get(server)  # plain HTTP to a TLS port
    assert r.status == 200 and r.body == ALPHA + BETA
    assert plain.status == 400
    assert plain.body == b"Client sent an HTTP request to an HTTPS server.\n"


def test_mtls_required(pki: PKI, tmp_path: Path) -> None:
    ca, other_ca = pki.ca("ca"), pki.ca("other-ca")
    pki.issue(ca, "server")
    good = pki.issue(ca, "client", client=True)
    foreign = pki.issue(other_ca, "foreign", client=True)
    config = web_yml(
        tmp_path,
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
        "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n",
    )
    with serving(config_file=config) as server:
        ok = get(server, context=client_context(ca, good))
        no_cert = refusal(server, client_context(ca))
        wrong_ca = refusal(server, client_context(ca, foreign))
    assert ok.status == 200 and ok.body == ALPHA + BETA
    assert no_cert == "TLSV13_ALERT_CERTIFICATE_REQUIRED"
    assert wrong_ca == "TLSV1_ALERT_UNKNOWN_CA"


def test_mtls_client_allowed_sans(pki: PKI, tmp_path: Path) -> None:
    ca = pki.ca("ca")
    pki.issue(ca, "server")
    allowed = pki.issue(ca, "scraper", client=True, dns=("scraper.example",), ips=())
    by_ip = pki.issue(ca, "by-ip", client=True, dns=(), ips=("2001:db8::1",))
    other = pki.issue(ca, "intruder", client=True, dns=("intruder.example",), ips=())
    config = web_yml(
        tmp_path,
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
        "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n"
        "  client_allowed_sans: [scraper.example, '2001:db8::1']\n",
    )
    with serving(config_file=config) as server:
        ok = get(server, context=client_context(ca, allowed))
        ok_ip = get(server, context=client_context(ca, by_ip))
        refused = get(server, context=client_context(ca, other))
    assert (ok.status, ok_ip.status) == (200, 200)
    assert refused.status == 403 and refused.body == b"Forbidden\n"


def test_tls_with_basic_auth(pki: PKI, tmp_path: Path) -> None:
    ca = pki.ca("ca")
    pki.issue(ca, "server")
    config = web_yml(
        tmp_path,
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
        f"basic_auth_users:\n  alice: {HASH1}\n",
    )
    with serving(config_file=config) as server:
        ok = get(server, context=client_context(ca), auth=("alice", PW1))
        missing = get(server, context=client_context(ca))
    assert ok.status == 200 and ok.body == ALPHA + BETA
    assert missing.status == 401 and missing.headers["WWW-Authenticate"] == "Basic"


def test_certificate_rotation_without_restart(pki: PKI, tmp_path: Path) -> None:
    ca = pki.ca("ca")
    first = pki.issue(ca, "server")
    config = web_yml(
        tmp_path, "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
    )
    with serving(config_file=config) as server:
        assert served_serial(server, ca) == first.serial
        second = pki.issue(ca, "server")  # written over the same two files
        assert served_serial(server, ca) == second.serial
        r = get(server, context=client_context(ca))
    assert second.serial != first.serial and r.status == 200


def test_half_rotated_certificate_keeps_the_old_pair(
    pki: PKI, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ca = pki.ca("ca")
    first = pki.issue(ca, "server")
    other = pki.issue(ca, "other")
    config = web_yml(
        tmp_path, "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
    )
    with caplog.at_level(logging.ERROR, logger=LOGGER), serving(config_file=config) as server:
        (tmp_path / "server.crt").write_bytes(other.cert.read_bytes())  # key not yet replaced
        assert served_serial(server, ca) == first.serial
        (tmp_path / "server.key").write_bytes(other.key.read_bytes())
        assert served_serial(server, ca) == other.serial
    key = tmp_path / "server.key"
    crt = tmp_path / "server.crt"
    assert [r.getMessage() for r in caplog.records] == [
        f"web config not reloaded, keeping the previous one: {config}: tls_server_config.key_file: "
        f'"{key}" does not match the certificate in "{crt}"'
    ]


# --- /-/healthy, /-/ready, HEAD --------------------------------------------------------------


def request(server: WebServer, method: str, path: str) -> Response:
    conn = http.client.HTTPConnection(*server.bound_addresses[0], timeout=10)
    with closing(conn):
        conn.request(method, path)
        resp = conn.getresponse()
        return Response(resp.status, dict(resp.getheaders()), resp.read())


def test_healthy_and_ready_follow_prometheus() -> None:
    ready = threading.Event()
    server = WebServer(
        settings=WebSettings(listen_address=["127.0.0.1:0"]),
        source=TwoCollectors(),
        logger=logging.getLogger(LOGGER),
        readiness=ready.is_set,
    )
    server.start()
    try:
        healthy = get(server, "/-/healthy")
        not_ready = get(server, "/-/ready")
        ready.set()
        now_ready = get(server, "/-/ready")
        head = request(server, "HEAD", "/-/ready")
    finally:
        server.stop()
    assert (healthy.status, healthy.body) == (200, b"retinad is Healthy.\n")
    assert (not_ready.status, not_ready.body) == (503, b"Service Unavailable\n")
    assert (now_ready.status, now_ready.body) == (200, b"retinad is Ready.\n")
    assert (head.status, head.body, head.headers["Content-Length"]) == (200, b"", "18")


def test_head_metrics_answers_like_get_without_a_body() -> None:
    with serving() as server:
        full = get(server)
        head = request(server, "HEAD", "/metrics")
    assert head.status == 200 and head.body == b""
    assert without_date_server(head.headers) == without_date_server(full.headers)
    assert head.headers["Content-Length"] == str(len(ALPHA + BETA))


def test_health_endpoints_sit_behind_basic_auth_as_in_prometheus(tmp_path: Path) -> None:
    config = web_yml(tmp_path, f"basic_auth_users:\n  alice: {HASH1}\n")
    with serving(config_file=config) as server:
        refused = [get(server, p).status for p in ("/-/healthy", "/-/ready")]
        allowed = [get(server, p, auth=("alice", PW1)).status for p in ("/-/healthy", "/-/ready")]
    assert (refused, allowed) == ([401, 401], [200, 200])


# --- reconfigure and stop ----------------------------------------------------------------------


def test_reconfigure_keeps_the_socket_of_an_unchanged_address(free_port: int) -> None:
    with serving(listen=[f"127.0.0.1:{free_port}"]) as server:
        keep_alive = http.client.HTTPConnection("127.0.0.1", free_port, timeout=10)
        keep_alive.request("GET", "/metrics")
        assert keep_alive.getresponse().read() == ALPHA + BETA
        server.reconfigure(
            WebSettings(listen_address=[f"127.0.0.1:{free_port}"], telemetry_path="/m2")
        )
        assert server.bound_addresses == [("127.0.0.1", free_port)]
        assert get(server, "/m2").status == 200 and get(server, "/metrics").status == 404
        keep_alive.close()


def test_refused_reconfigure_changes_nothing(tmp_path: Path, free_port: int) -> None:
    with serving() as server:
        before = server.bound_addresses
        with pytest.raises(WebConfigError):
            server.reconfigure(
                WebSettings(
                    listen_address=[f"127.0.0.1:{free_port}"],
                    config_file=str(tmp_path / "absent.yml"),
                )
            )
        assert server.bound_addresses == before and server.settings.telemetry_path == "/metrics"
        assert get(server).status == 200
        with socket.socket() as probe:  # the new address was never bound
            probe.bind(("127.0.0.1", free_port))


def test_stop_waits_for_a_scrape_in_flight() -> None:
    source = BlockingSource()
    with serving(source=source) as server:
        got: list[Response] = []
        t = threading.Thread(target=lambda: got.append(get(server)))
        t.start()
        assert source.entered.wait(10)
        stopper = threading.Thread(target=server.stop)
        stopper.start()
        stopper.join(0.3)
        assert stopper.is_alive(), "stop() returned while a render was in flight"
        source.release.set()
        stopper.join(10)
        t.join(10)
    assert [r.status for r in got] == [200] and got[0].body == ALPHA + BETA


def test_web_config_deleted_at_run_time_warns_once_and_keeps_the_last(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = web_yml(tmp_path, f"basic_auth_users:\n  alice: {HASH1}\n")
    with caplog.at_level(logging.WARNING, logger=LOGGER), serving(config_file=config) as server:
        Path(config).unlink()
        statuses = [get(server, auth=("alice", PW1)).status for _ in range(3)]
        statuses.append(get(server).status)
    assert statuses == [200, 200, 200, 401]
    assert [r.getMessage() for r in caplog.records] == [
        f"web config {config} was deleted; the last one read stays in force (restore the "
        "file, or remove [web].config_file and reload, to change it)"
    ]
