"""The exporter-toolkit web config: what loads, and the exact error for what does not.

Certificates are made here with ``cryptography`` (``PKI``), never committed; test_web.py
reuses the same helper.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import bcrypt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from retinad.errors import WebConfigError
from retinad.exporter.webconfig import (
    HTTPServerConfig,
    RateLimit,
    TLSServerConfig,
    WebConfig,
    WebConfigWatcher,
    load_web_config,
)

HASH = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(4)).decode()


@dataclass
class Issued:
    """A certificate and its key as PEM files, plus what a test checks against."""

    cert: Path
    key: Path
    serial: int
    cert_obj: x509.Certificate
    key_obj: ec.EllipticCurvePrivateKey


class PKI:
    """A throwaway certificate authority writing PEM files into a folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._serial = 1000

    def ca(self, name: str) -> Issued:
        return self._make(name, issuer=None, ca=True)

    def issue(
        self,
        ca: Issued,
        name: str,
        *,
        client: bool = False,
        dns: tuple[str, ...] = ("localhost",),
        ips: tuple[str, ...] = ("127.0.0.1", "::1"),
        emails: tuple[str, ...] = (),
        stem: str | None = None,
    ) -> Issued:
        return self._make(
            name, issuer=ca, ca=False, client=client, dns=dns, ips=ips, emails=emails, stem=stem
        )

    def _make(
        self,
        name: str,
        *,
        issuer: Issued | None,
        ca: bool,
        client: bool = False,
        dns: tuple[str, ...] = (),
        ips: tuple[str, ...] = (),
        emails: tuple[str, ...] = (),
        stem: str | None = None,
    ) -> Issued:
        self._serial += 1
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer.cert_obj.subject if issuer else subject)
            .public_key(key.public_key())
            .serial_number(self._serial)
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if ca:
            builder = builder.add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
        else:
            usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
            builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
            names += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
            names += [x509.RFC822Name(e) for e in emails]
            if names:
                builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        signer = issuer.key_obj if issuer else key
        cert = builder.sign(signer, hashes.SHA256())
        stem = stem or name
        cert_path, key_path = self.folder / f"{stem}.crt", self.folder / f"{stem}.key"
        self.write(cert_path, key_path, cert, key)
        return Issued(cert_path, key_path, self._serial, cert, key)

    @staticmethod
    def write(
        cert_path: Path, key_path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
    ) -> None:
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )


@pytest.fixture
def pki(tmp_path: Path) -> PKI:
    return PKI(tmp_path)


def write(folder: Path, text: str, name: str = "web.yml") -> str:
    path = folder / name
    path.write_text(text)
    return str(path)


def error_of(path: str) -> str:
    with pytest.raises(WebConfigError) as info:
        load_web_config(path)
    return str(info.value)


# --- what loads ----------------------------------------------------------------------------


def test_no_file_means_plain_http_without_auth() -> None:
    config = load_web_config("")
    assert config == WebConfig()
    assert config.tls is None and config.ssl_context is None and config.files == ()
    assert dict(config.basic_auth_users) == {}


def test_empty_file_is_the_defaults(tmp_path: Path) -> None:
    assert load_web_config(write(tmp_path, "")) == WebConfig()


def test_full_config_with_relative_paths_resolved_against_the_file(
    pki: PKI, tmp_path: Path
) -> None:
    ca = pki.ca("ca")
    pki.issue(ca, "server")
    sub = tmp_path / "conf"
    sub.mkdir()
    path = write(
        sub,
        f"""
tls_server_config:
  cert_file: ../server.crt
  key_file: ../server.key
  client_auth_type: RequireAndVerifyClientCert
  client_ca_file: {ca.cert}
  client_allowed_sans: [scraper.example]
  min_version: TLS13
  cipher_suites: [TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, TLS_AES_128_GCM_SHA256]
  prefer_server_cipher_suites: false
  curve_preferences: [X25519, CurveP256]
http_server_config:
  http2: false
  headers:
    X-Frame-Options: deny
    Strict-Transport-Security: max-age=31536000
    Content-Security-Policy: ""
basic_auth_users:
  alice: {HASH}
rate_limit:
  interval: 1m30s
  burst: 5
""",
    )
    config = load_web_config(path)
    assert config.tls == TLSServerConfig(
        cert_file=os.path.join(str(sub), "../server.crt"),
        key_file=os.path.join(str(sub), "../server.key"),
        client_auth_type="RequireAndVerifyClientCert",
        client_ca_file=str(ca.cert),
        client_allowed_sans=("scraper.example",),
        min_version="TLS13",
        max_version="TLS13",
        cipher_suites=("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", "TLS_AES_128_GCM_SHA256"),
        prefer_server_cipher_suites=False,
        curve_preferences=("X25519", "CurveP256"),
    )
    assert config.http == HTTPServerConfig(
        http2=False,
        headers=(("X-Frame-Options", "deny"), ("Strict-Transport-Security", "max-age=31536000")),
    )
    assert dict(config.basic_auth_users) == {"alice": HASH}
    assert config.rate_limit == RateLimit(interval_seconds=90.0, burst=5)
    assert config.ssl_context is not None
    assert config.files == (config.tls.cert_file, config.tls.key_file, str(ca.cert))


def test_tls_section_without_certificate_settings_leaves_tls_off(tmp_path: Path) -> None:
    config = load_web_config(write(tmp_path, "tls_server_config:\n  min_version: TLS13\n"))
    assert config.tls is None and config.ssl_context is None


# --- what does not, and the exact message ----------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = str(tmp_path / "nope.yml")
    assert error_of(path) == f"{path}: no such file"


def test_not_yaml(tmp_path: Path) -> None:
    path = write(tmp_path, "basic_auth_users: {alice: [\n")
    assert error_of(path) == (
        f"{path}: not valid YAML: expected the node content, but found '<stream end>' "
        "at line 2, column 1"
    )


def test_top_level_not_a_mapping(tmp_path: Path) -> None:
    path = write(tmp_path, "- tls_server_config\n")
    assert error_of(path) == f"{path}: top level: expected a mapping, got a list"


def test_unknown_top_level_key(tmp_path: Path) -> None:
    path = write(tmp_path, "tls_server_confg: {}\n")
    assert error_of(path) == (
        f'{path}: tls_server_confg: unknown key (did you mean "tls_server_config"?)'
    )


def test_unknown_nested_key(tmp_path: Path) -> None:
    path = write(tmp_path, "tls_server_config:\n  cert_fle: a.crt\n")
    assert error_of(path) == (
        f'{path}: tls_server_config.cert_fle: unknown key (did you mean "cert_file"?)'
    )


def test_bad_client_auth_type(tmp_path: Path) -> None:
    path = write(tmp_path, "tls_server_config:\n  client_auth_type: Foo\n")
    assert error_of(path) == (
        f"{path}: tls_server_config.client_auth_type: expected one of NoClientCert, "
        "RequestClientCert, RequireAnyClientCert, VerifyClientCertIfGiven, "
        'RequireAndVerifyClientCert, got "Foo"'
    )


def test_require_any_client_cert_is_refused_with_the_reason(pki: PKI, tmp_path: Path) -> None:
    pki.issue(pki.ca("ca"), "server")
    path = write(
        tmp_path,
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
        "  client_auth_type: RequireAnyClientCert\n",
    )
    assert error_of(path) == (
        f"{path}: tls_server_config.client_auth_type: RequireAnyClientCert is not supported "
        "(Python's ssl cannot require a client certificate without verifying it); use "
        "RequireAndVerifyClientCert with client_ca_file"
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            "  client_auth_type: RequireAndVerifyClientCert\n",
            "tls_server_config.client_ca_file: missing; client_auth_type "
            "RequireAndVerifyClientCert needs it",
        ),
        (
            "  client_ca_file: ca.crt\n",
            "tls_server_config.client_ca_file: set, but client_auth_type is NoClientCert",
        ),
        (
            "  client_auth_type: VerifyClientCertIfGiven\n  client_ca_file: ca.crt\n"
            "  client_allowed_sans: [a]\n",
            "tls_server_config.client_allowed_sans: requires client_auth_type "
            "RequireAndVerifyClientCert",
        ),
        (
            "  min_version: TLS13\n  max_version: TLS12\n",
            "tls_server_config.max_version: TLS12 is below min_version TLS13",
        ),
        (
            "  min_version: TLS14\n",
            "tls_server_config.min_version: expected one of TLS10, TLS11, TLS12, TLS13, "
            'got "TLS14"',
        ),
        (
            "  cipher_suites: [TLS_RSA_WITH_RC4_128_SHA]\n",
            'tls_server_config.cipher_suites[0]: unknown cipher suite "TLS_RSA_WITH_RC4_128_SHA"',
        ),
        (
            "  curve_preferences: [CurveP256, Curve25519]\n",
            "tls_server_config.curve_preferences[1]: expected one of CurveP256, CurveP384, "
            'CurveP521, X25519, got "Curve25519"',
        ),
        (
            "  prefer_server_cipher_suites: maybe\n",
            'tls_server_config.prefer_server_cipher_suites: expected true or false, got "maybe"',
        ),
        ("  cert: inline\n", "tls_server_config.cert: inline PEM is not supported, use cert_file"),
    ],
)
def test_bad_tls_settings(pki: PKI, tmp_path: Path, extra: str, message: str) -> None:
    pki.issue(pki.ca("ca"), "server")
    path = write(
        tmp_path, f"tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n{extra}"
    )
    assert error_of(path) == f"{path}: {message}"


def test_key_file_missing_from_config(tmp_path: Path) -> None:
    path = write(tmp_path, "tls_server_config:\n  cert_file: server.crt\n")
    assert error_of(path) == (
        f"{path}: tls_server_config.key_file: missing; TLS needs cert_file and key_file"
    )


def test_cert_file_missing_on_disk(tmp_path: Path) -> None:
    path = write(tmp_path, "tls_server_config:\n  cert_file: gone.crt\n  key_file: gone.key\n")
    assert error_of(path) == (
        f'{path}: tls_server_config.cert_file: cannot read "{tmp_path}/gone.crt": no such file'
    )


def test_cert_file_that_is_not_a_certificate(pki: PKI, tmp_path: Path) -> None:
    server = pki.issue(pki.ca("ca"), "server")
    path = write(
        tmp_path, f"tls_server_config:\n  cert_file: {server.key}\n  key_file: {server.key}\n"
    )
    assert error_of(path) == (
        f'{path}: tls_server_config.cert_file: "{server.key}" holds no PEM certificate '
        "(no certificate or crl found)"
    )


def test_key_not_matching_cert(pki: PKI, tmp_path: Path) -> None:
    ca = pki.ca("ca")
    one, two = pki.issue(ca, "one"), pki.issue(ca, "two")
    path = write(tmp_path, f"tls_server_config:\n  cert_file: {one.cert}\n  key_file: {two.key}\n")
    assert error_of(path) == (
        f'{path}: tls_server_config.key_file: "{two.key}" does not match the certificate in '
        f'"{one.cert}"'
    )


def test_bad_bcrypt_hash(tmp_path: Path) -> None:
    path = write(tmp_path, "basic_auth_users:\n  alice: plaintext\n")
    assert error_of(path) == (
        f"{path}: basic_auth_users.alice: expected a bcrypt hash such as htpasswd -nBC 10 "
        "prints ($2y$10$ and 53 characters)"
    )


def test_user_name_that_is_not_a_string(tmp_path: Path) -> None:
    path = write(tmp_path, f"basic_auth_users:\n  123: {HASH}\n")
    assert error_of(path) == f"{path}: basic_auth_users: expected user names as strings, got 123"


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        (
            "X-Powered-By: retinad",
            'http_server_config.headers: HTTP header "X-Powered-By" can not be configured '
            "(allowed: Content-Security-Policy, Strict-Transport-Security, "
            "X-Content-Type-Options, X-Frame-Options, X-XSS-Protection)",
        ),
        (
            "X-Frame-Options: allow",
            "http_server_config.headers.X-Frame-Options: expected one of deny, sameorigin, "
            'got "allow"',
        ),
    ],
)
def test_refused_headers(tmp_path: Path, headers: str, message: str) -> None:
    path = write(tmp_path, f"http_server_config:\n  headers:\n    {headers}\n")
    assert error_of(path) == f"{path}: {message}"


def test_bad_rate_limit_interval(tmp_path: Path) -> None:
    path = write(tmp_path, "rate_limit:\n  interval: 10 seconds\n  burst: 1\n")
    assert error_of(path) == (
        f'{path}: rate_limit.interval: expected a duration such as "1s" or "500ms", '
        'got "10 seconds"'
    )


# --- the watcher -------------------------------------------------------------------------------


def test_watcher_reloads_changes_and_keeps_the_last_good_config(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    logger = logging.getLogger("test.webconfig")
    path = write(tmp_path, f"basic_auth_users:\n  alice: {HASH}\n")
    watcher = WebConfigWatcher(path, logger=logger)
    assert list(watcher.current().basic_auth_users) == ["alice"]

    write(tmp_path, f"basic_auth_users:\n  bob: {HASH}\n")  # same size, maybe same mtime
    assert list(watcher.current().basic_auth_users) == ["bob"]

    with caplog.at_level(logging.ERROR, logger="test.webconfig"):
        write(tmp_path, "basic_auth_users: [\n")
        for _ in range(3):
            assert list(watcher.current().basic_auth_users) == ["bob"]
    assert [r.getMessage() for r in caplog.records] == [
        "web config not reloaded, keeping the previous one: "
        f"{path}: not valid YAML: expected the node content, "
        "but found '<stream end>' at line 2, column 1"
    ]

    write(tmp_path, f"basic_auth_users:\n  carol: {HASH}\n")
    assert list(watcher.current().basic_auth_users) == ["carol"]


def test_watcher_refuses_turning_tls_on_at_run_time(
    pki: PKI, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pki.issue(pki.ca("ca"), "server")
    path = write(tmp_path, "")
    watcher = WebConfigWatcher(path, logger=logging.getLogger("test.webconfig"))
    with caplog.at_level(logging.ERROR, logger="test.webconfig"):
        write(tmp_path, "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n")
        assert watcher.current().tls is None
    assert [r.getMessage() for r in caplog.records] == [
        "web config not reloaded, keeping the previous one: "
        f"{path}: tls_server_config: TLS was off at start; turning it on or off needs a restart"
    ]
