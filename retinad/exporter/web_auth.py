"""Who may ask: basic auth against bcrypt hashes, and the client certificate's SANs.

exporter-toolkit's rules (``basic_auth_users``, ``tls_server_config.client_allowed_sans``);
the web config says who is allowed, this module checks one request against it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import socket
import ssl
import threading
from collections.abc import Mapping, Sequence
from typing import cast

import bcrypt


def san_allowed(conn: socket.socket, allowed: Sequence[str]) -> bool:
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


class BasicAuth:
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
        credentials = parse_basic(header)
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


def parse_basic(header: str | None) -> tuple[str, bytes] | None:
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
