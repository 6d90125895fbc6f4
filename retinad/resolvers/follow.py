"""Keep a resolver attached to its source: list, follow events, and on failure back off.

Every API-backed resolver (Docker, containerd, Kubernetes) has the same life: connect,
list everything into the index, follow the event stream until it breaks, then wait and do
it again. ``Follower`` is that loop, once. A source that is absent at start or restarts
later never stops the daemon; ``up`` says whether the index is currently in sync, and is
exported as ``retinad_resolver_up{resolver}``.

A session must never block without a bound: a source that accepts and then never answers,
or a connection that died without a FIN (a half-open stream stays silent forever), is
detected by the session's own read timeout and raised as ``TimeoutError`` naming the
source and what it was waiting for; the Follower logs it, turns ``up`` off and reconnects
with backoff. A session also relists on its own every ``resync_interval`` (``Resync``),
so a missed event cannot leave a stale or missing name for longer than that.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable

from retinad.model import Endpoint
from retinad.resolvers.base import IPAddress
from retinad.resolvers.index import EndpointIndex


class Backoff:
    """Exponential backoff with full jitter, capped (0.5 s, 1 s, 2 s ... 30 s)."""

    def __init__(self, initial: float = 0.5, maximum: float = 30.0) -> None:
        self.initial = initial
        self.maximum = maximum
        self._attempt = 0

    def next(self) -> float:
        ceiling = min(self.maximum, self.initial * (2**self._attempt))
        self._attempt += 1
        return random.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self._attempt = 0


class Resync:
    """When a connected session should relist again (0 = never, only on reconnect)."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._next = time.monotonic() + interval
        self.count = 0
        """Relists done while connected (not counting each session's first list)."""

    def listed(self) -> None:
        """A full list just finished (a session's first, or a resync): count from now."""
        self._next = time.monotonic() + self.interval

    def due(self) -> bool:
        return self.interval > 0 and time.monotonic() >= self._next

    def done(self) -> None:
        """A resync while connected finished."""
        self.count += 1
        self.listed()


class Follower:
    """Runs ``session`` in a daemon thread, again and again, until ``stop``.

    ``session(follower)`` connects, lists into the index, calls ``follower.mark_up()``,
    then blocks following events; it returns or raises when the stream ends. It should
    return promptly once ``follower.stopping`` is set; ``interrupt`` (if given) is called
    by ``stop`` to unblock a session stuck in a blocking read (close the client's socket).
    """

    def __init__(
        self,
        name: str,
        session: Callable[[Follower], None],
        *,
        logger: logging.Logger,
        interrupt: Callable[[], None] | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        self.name = name
        self._session = session
        self._interrupt = interrupt
        self._log = logger
        self._backoff = backoff or Backoff()
        self.stopping = threading.Event()
        self._up = threading.Event()
        self._thread: threading.Thread | None = None
        self.sessions = 0
        """How many sessions have been started (a resync is a new session)."""

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"resolver-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self.stopping.set()
        if self._interrupt is not None:
            try:
                self._interrupt()
            except Exception as err:  # closing a broken client may itself fail
                self._log.debug("%s: interrupt failed: %s", self.name, err)
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def mark_up(self) -> None:
        """The index is in sync with the source; reset the backoff."""
        if not self._up.is_set():
            self._log.info("%s: index in sync with its source", self.name)
        self._up.set()
        self._backoff.reset()

    def mark_down(self) -> None:
        self._up.clear()

    @property
    def up(self) -> bool:
        return self._up.is_set()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wait_up(self, timeout: float) -> bool:
        """For tests and start-up logs: block until the first sync or ``timeout``."""
        return self._up.wait(timeout)

    def _run(self) -> None:
        while not self.stopping.is_set():
            self.sessions += 1
            try:
                self._session(self)
                reason = "event stream ended"
            except ConnectionError as err:  # never reached it: say so, without a type name
                reason = err.strerror or str(err)
            except TimeoutError as err:  # reached it, but it stopped answering
                reason = str(err)
            except Exception as err:
                reason = f"{type(err).__name__}: {err}"
            was_up = self._up.is_set()
            self._up.clear()
            if self.stopping.is_set():
                return
            delay = self._backoff.next()
            if was_up:
                self._log.warning(
                    "%s: source lost (%s); retrying in %.1fs", self.name, reason, delay
                )
            else:
                self._log.warning(
                    "%s: not connected (%s); retrying in %.1fs", self.name, reason, delay
                )
            self.stopping.wait(delay)


class FollowedIndex:
    """The Resolver protocol for a resolver that is one EndpointIndex kept current by one
    Follower (docker, containerd): lookups read the index, health is the follower's."""

    index: EndpointIndex
    follower: Follower

    def start(self) -> None:
        self.follower.start()

    def stop(self) -> None:
        self.follower.stop()

    def by_ip(self, ip: IPAddress) -> Endpoint | None:
        return self.index.by_ip(ip)

    def by_ifindex(self, ifindex: int) -> Endpoint | None:
        return self.index.by_ifindex(ifindex)

    @property
    def up(self) -> bool:
        return self.follower.up

    @property
    def alive(self) -> bool:
        return self.follower.alive

    def size(self) -> int:
        return len(self.index)
