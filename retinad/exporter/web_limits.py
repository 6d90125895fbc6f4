"""Request limits of the web server: scrapes in flight and exporter-toolkit's rate limit.

Both are shared by every connection of one server and checked per request, so they are
plain thread-safe counters with no knowledge of HTTP.
"""

from __future__ import annotations

import threading
import time

from retinad.exporter.webconfig import RateLimit


class InFlight:
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


class RateLimiter:
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
