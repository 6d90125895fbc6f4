"""Reading the web config file: YAML, then every key checked against exporter-toolkit's
format, each error naming the file, the dotted key and the reason."""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from typing import Any

import yaml

from retinad.errors import WebConfigError
from retinad.exporter.webconfig_model import HTTPServerConfig, RateLimit, TLSServerConfig, WebConfig
from retinad.exporter.webconfig_tls import (
    CIPHER_SUITES,
    CURVES,
    TLS_VERSIONS,
    build_ssl_context,
    os_reason,
)

CLIENT_AUTH_TYPES = (
    "NoClientCert",
    "RequestClientCert",
    "RequireAnyClientCert",
    "VerifyClientCertIfGiven",
    "RequireAndVerifyClientCert",
)
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
        raise WebConfigError(f"{path}: cannot read: {os_reason(err)}") from err
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise WebConfigError(f"{path}: not valid YAML: {err.problem}{where}") from err
    except yaml.YAMLError as err:
        raise WebConfigError(f"{path}: not valid YAML: {err}") from err


def show(value: Any) -> str:
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
            raise self.error(f"expected a mapping, got {show(data)}")
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
            raise self.error(f"expected a string, got {show(value)}", key=key)
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self.data.get(key, default)
        if not isinstance(value, bool):
            raise self.error(f"expected true or false, got {show(value)}", key=key)
        return value

    def strings(self, key: str) -> tuple[str, ...]:
        value = self.data.get(key)
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.error(f"expected a list of strings, got {show(value)}", key=key)
        return tuple(value)

    def choice(self, key: str, choices: Mapping[str, Any] | tuple[str, ...], default: str) -> str:
        value = self.string(key, default) or default
        if value not in choices:
            raise self.error(f"expected one of {', '.join(choices)}, got {show(value)}", key=key)
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
            raise s.error(f"unknown cipher suite {show(name)}", key=f"cipher_suites[{i}]")
    curves = s.strings("curve_preferences")
    for i, name in enumerate(curves):
        if name not in CURVES:
            raise s.error(
                f"expected one of {', '.join(CURVES)}, got {show(name)}",
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
            raise h.error(f"HTTP header {show(name)} can not be configured (allowed: {allowed})")
        value = h.string(name)
        allowed_values = EXTRA_HEADERS[name]
        if value and allowed_values and value not in allowed_values:
            raise h.error(
                f"expected one of {', '.join(allowed_values)}, got {show(value)}", key=name
            )
        if value:  # "Unset if blank"
            headers.append((name, value))
    return HTTPServerConfig(http2=s.boolean("http2", True), headers=tuple(headers))


def _parse_users(data: Any, *, source: str) -> dict[str, str]:
    s = _Section(data, source=source, path="basic_auth_users", known=None)
    users: dict[str, str] = {}
    for user, hashed in s.data.items():
        if not isinstance(user, str):
            raise s.error(f"expected user names as strings, got {show(user)}")
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
        raise s.error(f"expected a whole number of 0 or more, got {show(burst)}", key="burst")
    interval = s.data.get("interval", "0s")
    seconds = _duration(interval)
    if seconds is None:
        raise s.error(
            f'expected a duration such as "1s" or "500ms", got {show(interval)}', key="interval"
        )
    return RateLimit(interval_seconds=seconds, burst=burst)


def _duration(value: Any) -> float | None:
    """Parse a Go duration ("1m30s", "250ms"); None if it is not one. Bare 0 is allowed."""
    if value == 0 and not isinstance(value, bool):
        return 0.0
    if not isinstance(value, str) or not value or _DURATION.sub("", value):
        return None
    return sum(float(n) * _UNITS[u] for n, u in _DURATION.findall(value))
