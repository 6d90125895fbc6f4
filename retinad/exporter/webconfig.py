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
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import ssl
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from retinad.errors import WebConfigError

CLIENT_AUTH_TYPES = (
    "NoClientCert",
    "RequestClientCert",
    "RequireAnyClientCert",
    "VerifyClientCertIfGiven",
    "RequireAndVerifyClientCert",
)
TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
CURVES = {"CurveP256": "prime256v1", "CurveP384": "secp384r1", "CurveP521": "secp521r1"}
CURVES["X25519"] = "X25519"
CIPHER_SUITES = {
    # Go's tls.CipherSuites() names -> OpenSSL names. TLS 1.3 suites map to None.
    "TLS_AES_128_GCM_SHA256": None,
    "TLS_AES_256_GCM_SHA384": None,
    "TLS_CHACHA20_POLY1305_SHA256": None,
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
}
EXTRA_HEADERS: dict[str, tuple[str, ...]] = {
    # exporter-toolkit's extraHTTPHeaders: the only headers it lets a config set, and the
    # values allowed where the header is an enumeration (empty: any value).
    "Content-Security-Policy": (),
    "Strict-Transport-Security": (),
    "X-Content-Type-Options": ("nosniff",),
    "X-Frame-Options": ("deny", "sameorigin"),
    "X-XSS-Protection": (),
}
_BCRYPT = re.compile(r"^\$2[abxy]?\$(\d\d)\$[./A-Za-z0-9]{53}$")
_DURATION = re.compile(r"(\d+(?:\.\d*)?)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


@dataclass(frozen=True)
class TLSServerConfig:
    """``tls_server_config``; file paths are already resolved against the config's folder."""

    cert_file: str
    key_file: str
    client_auth_type: str = "NoClientCert"
    client_ca_file: str = ""
    client_allowed_sans: tuple[str, ...] = ()
    min_version: str = "TLS12"
    max_version: str = "TLS13"
    cipher_suites: tuple[str, ...] = ()
    prefer_server_cipher_suites: bool = True
    curve_preferences: tuple[str, ...] = ()


@dataclass(frozen=True)
class HTTPServerConfig:
    """``http_server_config``: ``http2`` is kept for the record; ``headers`` are sent."""

    http2: bool = True
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class RateLimit:
    """``rate_limit``: a token bucket over every request; interval 0 disables it."""

    interval_seconds: float = 0.0
    burst: int = 0


@dataclass(frozen=True)
class WebConfig:
    """A parsed web config. ``WebConfig()`` is plain HTTP without authentication."""

    tls: TLSServerConfig | None = None
    http: HTTPServerConfig = field(default_factory=HTTPServerConfig)
    basic_auth_users: Mapping[str, str] = field(default_factory=dict, hash=False)
    rate_limit: RateLimit = field(default_factory=RateLimit)
    ssl_context: ssl.SSLContext | None = field(default=None, compare=False, repr=False)
    """Built from ``tls`` when the file was read; None without TLS."""

    @property
    def files(self) -> tuple[str, ...]:
        """The certificate, key and CA files this config reads, to watch for changes."""
        if self.tls is None:
            return ()
        named = (self.tls.cert_file, self.tls.key_file, self.tls.client_ca_file)
        return tuple(f for f in named if f)


def load_web_config(path: str) -> WebConfig:
    """Read and validate the web config at ``path``; "" means no file: plain HTTP."""
    if not path:
        return WebConfig()
    return _parse(_read_yaml(path), source=path, folder=os.path.dirname(path))


# --- reading and walking -------------------------------------------------------------------


def _read_yaml(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise WebConfigError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise WebConfigError(f"{path}: cannot read: {_reason(err)}") from err
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise WebConfigError(f"{path}: not valid YAML: {err.problem}{where}") from err
    except yaml.YAMLError as err:
        raise WebConfigError(f"{path}: not valid YAML: {err}") from err


def _reason(err: BaseException) -> str:
    if isinstance(err, FileNotFoundError):
        return "no such file"
    if isinstance(err, OSError) and err.strerror:
        return err.strerror.lower()
    return str(err)


def _show(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


class _Section:
    """One YAML mapping with its dotted key path, for error messages that name the key."""

    def __init__(self, data: Any, *, source: str, path: str, known: tuple[str, ...] | None) -> None:
        """``known`` lists the allowed keys; None for a free map (users, headers)."""
        self.source, self.path = source, path
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise self.error(f"expected a mapping, got {_show(data)}")
        allowed = known or ()
        for key in data if known is not None else ():
            if key not in allowed:
                near = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
                hint = f' (did you mean "{near[0]}"?)' if near else ""
                raise self.error(f"unknown key{hint}", key=str(key))
        self.data: dict[Any, Any] = data

    def error(self, reason: str, *, key: str | None = None) -> WebConfigError:
        where = ".".join(p for p in (self.path, key) if p) or "top level"
        return WebConfigError(f"{self.source}: {where}: {reason}")

    def string(self, key: str, default: str = "") -> str:
        value = self.data.get(key, default)
        if value is None:
            return default
        if not isinstance(value, str):
            raise self.error(f"expected a string, got {_show(value)}", key=key)
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self.data.get(key, default)
        if not isinstance(value, bool):
            raise self.error(f"expected true or false, got {_show(value)}", key=key)
        return value

    def strings(self, key: str) -> tuple[str, ...]:
        value = self.data.get(key)
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.error(f"expected a list of strings, got {_show(value)}", key=key)
        return tuple(value)

    def choice(self, key: str, choices: Mapping[str, Any] | tuple[str, ...], default: str) -> str:
        value = self.string(key, default) or default
        if value not in choices:
            raise self.error(f"expected one of {', '.join(choices)}, got {_show(value)}", key=key)
        return value


def _parse(data: Any, *, source: str, folder: str) -> WebConfig:
    if data is None:  # an empty file: exporter-toolkit's defaults
        return WebConfig()
    top = _Section(
        data,
        source=source,
        path="",
        known=("tls_server_config", "http_server_config", "basic_auth_users", "rate_limit"),
    )
    tls = _parse_tls(top.data.get("tls_server_config"), source=source, folder=folder)
    return WebConfig(
        tls=tls,
        http=_parse_http(top.data.get("http_server_config"), source=source),
        basic_auth_users=_parse_users(top.data.get("basic_auth_users"), source=source),
        rate_limit=_parse_rate_limit(top.data.get("rate_limit"), source=source),
        ssl_context=build_ssl_context(tls, source=source) if tls else None,
    )


def _parse_tls(data: Any, *, source: str, folder: str) -> TLSServerConfig | None:
    inline = ("cert", "key", "client_ca")
    known = tuple(TLSServerConfig.__dataclass_fields__) + inline
    s = _Section(data, source=source, path="tls_server_config", known=known)
    for key in inline:
        if key in s.data:
            raise s.error(f"inline PEM is not supported, use {key}_file", key=key)
    auth = s.choice("client_auth_type", CLIENT_AUTH_TYPES, "NoClientCert")
    cert, key, ca = (s.string(k) for k in ("cert_file", "key_file", "client_ca_file"))
    if not (cert or key or ca or s.data.get("client_auth_type")):
        return None  # exporter-toolkit: TLS is on only when one of these is set
    if not cert:
        raise s.error("missing; TLS needs cert_file and key_file", key="cert_file")
    if not key:
        raise s.error("missing; TLS needs cert_file and key_file", key="key_file")
    if auth == "RequireAnyClientCert":
        raise s.error(
            "RequireAnyClientCert is not supported (Python's ssl cannot require a client "
            "certificate without verifying it); use RequireAndVerifyClientCert with "
            "client_ca_file",
            key="client_auth_type",
        )
    if ca and auth in ("NoClientCert", "RequestClientCert"):
        raise s.error(f"set, but client_auth_type is {auth}", key="client_ca_file")
    if not ca and auth in ("VerifyClientCertIfGiven", "RequireAndVerifyClientCert"):
        raise s.error(f"missing; client_auth_type {auth} needs it", key="client_ca_file")
    sans = s.strings("client_allowed_sans")
    if "client_allowed_sans" in s.data and auth != "RequireAndVerifyClientCert":
        raise s.error(
            "requires client_auth_type RequireAndVerifyClientCert", key="client_allowed_sans"
        )
    lo = s.choice("min_version", TLS_VERSIONS, "TLS12")
    hi = s.choice("max_version", TLS_VERSIONS, "TLS13")
    if TLS_VERSIONS[lo] > TLS_VERSIONS[hi]:
        raise s.error(f"{hi} is below min_version {lo}", key="max_version")
    ciphers = s.strings("cipher_suites")
    for i, name in enumerate(ciphers):
        if name not in CIPHER_SUITES:
            raise s.error(f"unknown cipher suite {_show(name)}", key=f"cipher_suites[{i}]")
    curves = s.strings("curve_preferences")
    for i, name in enumerate(curves):
        if name not in CURVES:
            raise s.error(
                f"expected one of {', '.join(CURVES)}, got {_show(name)}",
                key=f"curve_preferences[{i}]",
            )
    return TLSServerConfig(
        cert_file=os.path.join(folder, cert),
        key_file=os.path.join(folder, key),
        client_auth_type=auth,
        client_ca_file=os.path.join(folder, ca) if ca else "",
        client_allowed_sans=sans,
        min_version=lo,
        max_version=hi,
        cipher_suites=ciphers,
        prefer_server_cipher_suites=s.boolean("prefer_server_cipher_suites", True),
        curve_preferences=curves,
    )


def _parse_http(data: Any, *, source: str) -> HTTPServerConfig:
    s = _Section(data, source=source, path="http_server_config", known=("http2", "headers"))
    raw = s.data.get("headers") or {}
    h = _Section(raw, source=source, path="http_server_config.headers", known=None)
    headers: list[tuple[str, str]] = []
    for name, value in h.data.items():
        if name not in EXTRA_HEADERS:
            allowed = ", ".join(EXTRA_HEADERS)
            raise h.error(f"HTTP header {_show(name)} can not be configured (allowed: {allowed})")
        value = h.string(name)
        allowed_values = EXTRA_HEADERS[name]
        if value and allowed_values and value not in allowed_values:
            raise h.error(
                f"expected one of {', '.join(allowed_values)}, got {_show(value)}", key=name
            )
        if value:  # "Unset if blank"
            headers.append((name, value))
    return HTTPServerConfig(http2=s.boolean("http2", True), headers=tuple(headers))


def _parse_users(data: Any, *, source: str) -> dict[str, str]:
    s = _Section(data, source=source, path="basic_auth_users", known=None)
    users: dict[str, str] = {}
    for user, hashed in s.data.items():
        if not isinstance(user, str):
            raise s.error(f"expected user names as strings, got {_show(user)}")
        m = _BCRYPT.match(hashed) if isinstance(hashed, str) else None
        if m is None or not 4 <= int(m.group(1)) <= 31:
            raise s.error(
                "expected a bcrypt hash such as htpasswd -nBC 10 prints ($2y$10$ and "
                "53 characters)",
                key=user,
            )
        users[user] = hashed
    return users


def _parse_rate_limit(data: Any, *, source: str) -> RateLimit:
    s = _Section(data, source=source, path="rate_limit", known=("interval", "burst"))
    burst = s.data.get("burst", 0)
    if isinstance(burst, bool) or not isinstance(burst, int) or burst < 0:
        raise s.error(f"expected a whole number of 0 or more, got {_show(burst)}", key="burst")
    interval = s.data.get("interval", "0s")
    seconds = _duration(interval)
    if seconds is None:
        raise s.error(
            f'expected a duration such as "1s" or "500ms", got {_show(interval)}', key="interval"
        )
    return RateLimit(interval_seconds=seconds, burst=burst)


def _duration(value: Any) -> float | None:
    """Parse a Go duration ("1m30s", "250ms"); None if it is not one. Bare 0 is allowed."""
    if value == 0 and not isinstance(value, bool):
        return 0.0
    if not isinstance(value, str) or not value or _DURATION.sub("", value):
        return None
    return sum(float(n) * _UNITS[u] for n, u in _DURATION.findall(value))


# --- TLS -----------------------------------------------------------------------------------


def build_ssl_context(tls: TLSServerConfig, *, source: str) -> ssl.SSLContext:
    """A server context for ``tls``; WebConfigError if a file is missing or does not load."""
    where = f"{source}: tls_server_config"
    for key in ("cert_file", "key_file", "client_ca_file"):
        name = getattr(tls, key)
        try:
            if name:
                with open(name, "rb"):
                    pass
        except OSError as err:
            raise WebConfigError(f'{where}.{key}: cannot read "{name}": {_reason(err)}') from err
    try:  # a throwaway context tells "not a certificate" apart from "wrong key"
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=tls.cert_file)
    except (ssl.SSLError, OSError) as err:
        raise WebConfigError(
            f'{where}.cert_file: "{tls.cert_file}" holds no PEM certificate ({_ssl_reason(err)})'
        ) from err
    ctx = _fresh_context(tls)
    try:
        ctx.load_cert_chain(tls.cert_file, tls.key_file)
    except (ssl.SSLError, OSError) as err:
        if getattr(err, "reason", "") == "KEY_VALUES_MISMATCH":
            raise WebConfigError(
                f'{where}.key_file: "{tls.key_file}" does not match the certificate in '
                f'"{tls.cert_file}"'
            ) from err
        raise WebConfigError(
            f'{where}.key_file: "{tls.key_file}" holds no usable private key ({_ssl_reason(err)})'
        ) from err
    if tls.client_ca_file:
        try:
            ctx.load_verify_locations(cafile=tls.client_ca_file)
        except (ssl.SSLError, OSError) as err:
            raise WebConfigError(
                f'{where}.client_ca_file: "{tls.client_ca_file}" holds no PEM certificate '
                f"({_ssl_reason(err)})"
            ) from err
        ctx.verify_mode = (
            ssl.CERT_REQUIRED
            if tls.client_auth_type == "RequireAndVerifyClientCert"
            else ssl.CERT_OPTIONAL
        )
    return ctx


def _fresh_context(tls: TLSServerConfig) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = TLS_VERSIONS[tls.min_version]
    ctx.maximum_version = TLS_VERSIONS[tls.max_version]
    ciphers = [c for c in (CIPHER_SUITES[n] for n in tls.cipher_suites) if c]
    if ciphers:
        ctx.set_ciphers(":".join(ciphers))
    if tls.prefer_server_cipher_suites:
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    else:
        ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    first = CURVES[tls.curve_preferences[0]] if tls.curve_preferences else "X25519"
    if first != "X25519":  # X25519 first is OpenSSL's own default order already
        ctx.set_ecdh_curve(first)
    return ctx


def _ssl_reason(err: BaseException) -> str:
    if isinstance(err, ssl.SSLError):
        return str(err.reason or err.strerror or err).lower().replace("_", " ")
    return _reason(err)


# --- watching ------------------------------------------------------------------------------

_RACY_SECONDS = 2.0
"""A file modified this close to when it was read may change again within the same
timestamp tick, so its contents (not only its stat) are compared on the next check."""

_Signature = tuple[tuple[str, int, int, int, int], ...]


class WebConfigWatcher:
    """Hands out the current web config, re-reading it when its files change.

    Every request calls ``current()``: one ``stat`` per file (the YAML plus the
    certificate, key and CA it names) when nothing changed. A config that became invalid
    is logged once per change and the last good one stays in force. Whether TLS is on is
    fixed by the first config, as in exporter-toolkit: a change that would turn it on or
    off is refused the same way.
    """

    def __init__(self, path: str, *, logger: logging.Logger) -> None:
        self._path, self._logger = path, logger
        self._lock = threading.Lock()
        self._config = load_web_config(path)
        self._tls = self._config.tls is not None
        self._paths: tuple[str, ...] = (path, *self._config.files) if path else ()
        self._sig = _stat(self._paths)
        self._contents = _contents(self._paths)
        self._checked_at = time.time()
        self._bad_contents: tuple[bytes, ...] | None = None

    @property
    def tls(self) -> bool:
        """Whether this server speaks TLS (fixed at start)."""
        return self._tls

    def current(self) -> WebConfig:
        """The config in force now; never raises."""
        if not self._path:
            return self._config
        with self._lock:
            sig = _stat(self._paths)
            if sig == self._sig and not self._racy():
                return self._config
            contents = _contents(self._paths)
            if contents == self._contents:  # touched, or checked again in the racy window
                self._sig, self._checked_at = sig, time.time()
            elif contents != self._bad_contents:
                self._reload(contents)
            return self._config

    def _racy(self) -> bool:
        """Whether a file was modified so close to the last check that a later write in
        the same timestamp tick would leave its stat unchanged (git's "racily clean")."""
        newest = max((max(m, c) for _, _, _, m, c in self._sig), default=0) / 1e9
        return self._checked_at - newest <= _RACY_SECONDS

    def _reload(self, contents: tuple[bytes, ...]) -> None:
        if not os.path.exists(self._path):
            self._bad_contents = contents
            self._logger.warning(
                "web config %s was deleted; the last one read stays in force (restore the "
                "file, or remove [web].config_file and reload, to change it)",
                self._path,
            )
            return
        try:
            config = load_web_config(self._path)
            if (config.tls is not None) != self._tls:
                state = "on" if self._tls else "off"
                raise WebConfigError(
                    f"{self._path}: tls_server_config: TLS was {state} at start; turning it "
                    "on or off needs a restart"
                )
        except WebConfigError as err:
            self._bad_contents = contents
            self._logger.error("web config not reloaded, keeping the previous one: %s", err)
            return
        self._config, self._bad_contents = config, None
        self._paths = (self._path, *config.files)
        self._sig = _stat(self._paths)
        self._contents = _contents(self._paths)
        self._checked_at = time.time()
        self._logger.info("web config reloaded from %s", self._path)


def _stat(paths: tuple[str, ...]) -> _Signature:
    out = []
    for p in paths:
        try:
            st = os.stat(p)
        except OSError:
            out.append((p, -1, -1, -1, -1))
        else:
            out.append((p, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    return tuple(out)


def _contents(paths: tuple[str, ...]) -> tuple[bytes, ...]:
    out = []
    for p in paths:
        try:
            with open(p, "rb") as f:
                out.append(f.read())
        except OSError:
            out.append(b"")
    return tuple(out)
