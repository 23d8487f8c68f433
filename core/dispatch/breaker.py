"""Whether this process calls Redis now: a circuit breaker with a background probe.

A failed call opens it; while it is open every call fails at once (the caller takes the
PostgreSQL fallback or leaves the repair to the reconciler) and one probe task pings Redis
every `retry_after_s`. The first ping Redis answers closes it. So no caller waits on a Redis
that is away, however many callers there are: only the probe spends a connect or a timeout,
one at a time per process. (Letting the first caller after the pause try its own call, as a
time-based breaker does, made every worker of a fleet reconnect with its real call; after a
partition healed on a loaded host those connects overflowed the listener's accept queue,
timed out, and reopened the breakers, and the fleet stayed on the fallback.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from redis.exceptions import RedisError

log = logging.getLogger("jobharness.dispatch")
# What a Redis call raises when Redis is away. RuntimeError only as uvloop raises it for a
# write to a connection closed under it (a proxy or server cutting it mid-call); any other
# RuntimeError is re-raised by `unavailable`.
FAILURES = (RedisError, OSError, TimeoutError, RuntimeError)
CLOSED_TRANSPORT = "unable to perform operation on"


def unavailable(exc: BaseException) -> bool:
    """Whether a caught FAILURES exception means Redis is away (else: re-raise it)."""
    return not isinstance(exc, RuntimeError) or str(exc).startswith(CLOSED_TRANSPORT)
# A connect may wait for a SYN sent again after 1 s (a listener's full accept queue on a loaded
# host): connections get at least this long (only the probe connects while Redis is in doubt).
CONNECT_TIMEOUT_S = 2.0


def describe(exc: BaseException) -> str:
    """A failed call's cause, short: its class and the start of its message."""
    return f"{type(exc).__name__}: {str(exc)[:40]}"


class Breaker:
    def __init__(self, retry_after_s: float, probe: Callable[[], Awaitable[Any]]) -> None:
        self.retry_after_s = retry_after_s
        self.trips = 0  # closed -> open transitions
        self.probes_failed: Counter[str] = Counter()  # by the error's class
        self._probe = probe
        self._open = False
        self._prober: asyncio.Task[None] | None = None
        self._opened_at = 0.0

    @property
    def available(self) -> bool:
        return not self._open

    def trip(self, cause: str = "") -> None:
        """A call failed: open (if closed) and make sure one probe is running."""
        if not self._open:
            self.trips += 1
            self._open = True
            self._opened_at = time.monotonic()
            log.info("Redis unavailable (%s): calls fail at once until a probe answers", cause)
        if self._prober is None or self._prober.done():
            self._prober = asyncio.get_running_loop().create_task(self._run_probe())

    def reset(self) -> None:
        """Close now (a caller that checks Redis itself, e.g. a health check, goes first)."""
        self._open = False

    async def _run_probe(self) -> None:
        while self._open:
            await asyncio.sleep(self.retry_after_s)
            if not self._open:
                return
            try:
                await self._probe()
            except FAILURES as exc:
                if not unavailable(exc):
                    raise
                self.probes_failed[type(exc).__name__] += 1
                continue
            self._open = False
            log.info("Redis answered a probe after %.1f s: calls go to Redis again",
                     time.monotonic() - self._opened_at)

    async def close(self) -> None:
        if self._prober is not None:
            self._prober.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._prober
