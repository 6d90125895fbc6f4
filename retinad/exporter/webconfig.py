"""The exporter-toolkit web config file: parse, validate, and re-read it when it changes.

The format is Prometheus exporter-toolkit's (``docs/web-configuration.md``), so one file
works for node_exporter and retinad alike::

    tls_server_config: {cert_file, key_file, client_auth_type, client_ca_file,
                        client_allowed_sans, min_version, max_version, cipher_suites,
                        prefer_server_cipher_suites, curve_preferences}
    http_server_config: {http2, headers}
    basic_auth_users: {user: bcrypt hash}
    rate_limit: {interval, burst}

Loading is strict: an unknown key, a wrong type or a certificate that does not load is a
``WebConfigError`` naming the file, the key and the reason. A valid config carries its
ready ``ssl.SSLContext``, so a certificate is checked once, when the file is read.

Where Python's ``ssl`` module differs from Go's ``crypto/tls``:

* ``RequestClientCert`` asks nothing of the client: the certificate would never be used
  unverified, so asking and ignoring it is the same as not asking.
* ``RequireAnyClientCert`` (a certificate required but not verified) is refused:
  ``ssl`` cannot require a certificate without verifying it against a CA.
* ``cipher_suites`` applies to TLS 1.2 and below, as in Go; TLS 1.3 suites are accepted
  and ignored (both libraries always enable them).
* ``curve_preferences``: ``ssl`` can restrict the key exchange to one NIST curve only, so
  the first listed curve is the only one offered; with X25519 first, OpenSSL's default
  order (X25519 first, then the NIST curves) is kept.
* ``http_server_config.http2`` is accepted and ignored: retinad serves HTTP/1.1 only.

``WebConfigWatcher`` re-reads the file (and the certificate, key and CA files it names)
when one of them changes, which is what lets certificates rotate and passwords change
without a restart.

The jobs are split by module: ``webconfig_model`` (the parsed values),
``webconfig_parse`` (YAML and validation), ``webconfig_tls`` (the SSL context) and
``webconfig_watch`` (re-reading on change); this module keeps the names other code imports.
"""

from __future__ import annotations

from retinad.exporter.webconfig_model import HTTPServerConfig, RateLimit, TLSServerConfig, WebConfig
from retinad.exporter.webconfig_parse import CLIENT_AUTH_TYPES, EXTRA_HEADERS, load_web_config
from retinad.exporter.webconfig_tls import CIPHER_SUITES, CURVES, TLS_VERSIONS, build_ssl_context
from retinad.exporter.webconfig_watch import WebConfigWatcher

__all__ = [
    "CIPHER_SUITES",
    "CLIENT_AUTH_TYPES",
    "CURVES",
    "EXTRA_HEADERS",
    "TLS_VERSIONS",
    "HTTPServerConfig",
    "RateLimit",
    "TLSServerConfig",
    "WebConfig",
    "WebConfigWatcher",
    "build_ssl_context",
    "load_web_config",
]
