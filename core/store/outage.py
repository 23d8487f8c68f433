"""Outage bookkeeping for one store in one process: an outage starts with the first call that
finds the store unavailable and ends with the next call that succeeds. Each outage is logged
once when it starts and once when it ends (never a traceback per failed attempt), counted,
and reported to whoever subscribed (the job service counts it in /metrics)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

log = logging.getLogger("jobharness.store")


class Outage:
    """Whether a store is down as this process last saw it, and how often it went down."""

    def __init__(self, store: str) -> None:
        self.store = store
        self.down_since: float | None = None  # monotonic
        self.count = 0
        self.failed_calls = 0
        self.down_s_total = 0.0
        self._listeners: list[Callable[[bool], None]] = []

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def subscribe(self, listener: Callable[[bool], None]) -> None:
        """`listener(True)` when an outage starts, `listener(False)` when it ends."""
        self._listeners.append(listener)

    def failed(self, error: BaseException) -> None:
        self.failed_calls += 1
        if self.down_since is not None:
            return
        self.down_since = time.monotonic()
        self.count += 1
        log.warning("%s unavailable (%s: %s); retrying until it answers", self.store,
                    type(error).__name__, str(error).strip() or "no detail")
        self._tell(True)

    def succeeded(self) -> None:
        if self.down_since is None:
            return
        lasted = time.monotonic() - self.down_since
        self.down_since = None
        self.down_s_total += lasted
        log.warning("%s available again after %.1f s", self.store, lasted)
        self._tell(False)

    def _tell(self, down: bool) -> None:
        for listener in self._listeners:
            listener(down)
