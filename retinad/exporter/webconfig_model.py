"""The parsed web config: what the file says, as frozen values (no I/O here)."""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field


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
