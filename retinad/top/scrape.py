"""Read a retinad's /metrics as a client: plain HTTP, or TLS and basic auth as its web
config demands."""

from __future__ import annotations

import base64
import ssl
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from retinad.errors import RetinadError

Labels = frozenset[tuple[str, str]]


class ScrapeError(RetinadError):
    """The daemon could not be read (connection, TLS, authentication, HTTP status)."""


@dataclass(frozen=True)
class Target:
    url: str
    ssl_context: ssl.SSLContext | None = field(default=None, compare=False)
    username: str = ""
    password: str = field(default="", repr=False)
    timeout: float = 10.0


@dataclass(frozen=True)
class Snapshot:
    """One scrape: every sample by name, then by label set, and when it was taken."""

    at: float
    samples: dict[str, dict[Labels, float]]

    def get(self, name: str) -> dict[Labels, float]:
        return self.samples.get(name, {})

    def names(self) -> set[str]:
        return set(self.samples)


def fetch(target: Target) -> str:
    req = urllib.request.Request(target.url, headers={"Accept": "text/plain"})
    if target.username:
        token = base64.b64encode(f"{target.username}:{target.password}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(req, timeout=target.timeout, context=target.ssl_context) as r:
            return str(r.read().decode())
    except urllib.error.HTTPError as err:
        hint = " (basic auth: check --basic-auth.username/password-file)" if err.code == 401 else ""
        raise ScrapeError(f"{target.url}: HTTP {err.code} {err.reason}{hint}") from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise ScrapeError(f"{target.url}: {reason}") from None


def parse(text: str, at: float) -> Snapshot:
    samples: dict[str, dict[Labels, float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, {})[frozenset(s.labels.items())] = s.value
    return Snapshot(at, samples)


def scrape(target: Target) -> Snapshot:
    text = fetch(target)
    return parse(text, time.monotonic())
