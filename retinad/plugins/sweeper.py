"""Re-attribute kernel map keys soon after a resolver's index changes.

Scrapes drive the series ledgers, but an owner change must be acted on before the new
owner's packets pile onto the old owner's key: when Kubernetes hands a deleted pod's IP to
a new pod, every packet counted before the sweep is credited to the old pod. A sweeper
thread waits for the resolver chain's change signal, lets a burst of events settle for a
moment, and runs the plugin's accounting pass; it also runs every ``period`` seconds so
idle unknown keys are freed even when nobody scrapes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from retinad.resolvers.base import ResolverChain

SETTLE_SECONDS = 0.05
"""A container start brings several events (network connect, start); sweep once."""


class Sweeper:
    def __init__(
        self,
        chain: ResolverChain,
        sweep: Callable[[], object],
        *,
        logger: logging.Logger,
        name: str,
        period: float = 30.0,
    ) -> None:
        self._chain = chain
        self._sweep = sweep
        self._log = logger
        self._name = name
        self._period = period
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.sweeps = 0

    def start(self) -> None:
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._chain.notify_change()  # wake the thread
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        seen = self._chain.generation
        while not self._stopping.is_set():
            new = self._chain.wait_change(seen, self._period)
            if self._stopping.is_set():
                return
            if new != seen:
                self._stopping.wait(SETTLE_SECONDS)
                seen = self._chain.generation
            try:
                self._sweep()
                self.sweeps += 1
            except Exception as err:  # a failed pass is retried on the next change/period
                self._log.warning("%s: sweep failed: %s", self._name, err)
