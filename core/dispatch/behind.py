"""Write-behind indexing of new jobs.

A create is answered once its INSERT has committed (the job is durable then, invariant 1); its
Redis indexing follows in the background. Under a stream of creates a Redis call goes at most
every `linger_s`, carrying every create committed since the last one; a lone create goes at
once. Within the process nothing overtakes it: RedisDispatch holds every other call of this
process back until the indexing already begun has ended (`flushed`), so a caller that creates
and then acquires, cancels or reads the queues sees its own job. Another process may see a new
job a round trip later, as if it had been created a round trip later.

Redis unavailable: the jobs are left to the reconciler, which indexes every PENDING job Redis
lacks; so are the oldest waiting beyond `max_waiting` (Redis away for long).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence

from core.dispatch.records import EnqueueItem
from core.errors import DispatchUnavailable

BATCH = 5000  # jobs per Redis call
LINGER_S = 0.002
MAX_WAITING = 200_000


class IndexWriter:
    def __init__(self, enqueue: Callable[[Sequence[EnqueueItem]], Awaitable[int]], *,
                 linger_s: float = LINGER_S, max_waiting: int = MAX_WAITING) -> None:
        self.send = enqueue  # hands one batch to Redis
        self.linger_s = linger_s
        self.max_waiting = max_waiting
        self._waiting: list[tuple[EnqueueItem, Callable[[int], None] | None]] = []
        self.task: asyncio.Task[None] | None = None
        self._last_call_ended = 0.0  # monotonic

    @property
    def busy(self) -> bool:
        return self.task is not None and not self.task.done()

    def add(self, items: Sequence[EnqueueItem],
            deferred: Callable[[int], None] | None = None) -> None:
        """Index `items` soon; `deferred(n)` is told of the n left to the reconciler."""
        self._waiting += [(item, deferred) for item in items]
        if len(self._waiting) > self.max_waiting:
            self._defer(self._waiting[:len(self._waiting) - self.max_waiting])
            del self._waiting[:len(self._waiting) - self.max_waiting]
        if not self.busy:
            self.task = asyncio.get_running_loop().create_task(self._run())

    async def flushed(self) -> None:
        """Wait until everything added so far was handed to Redis (or left to the reconciler)."""
        while self.busy and asyncio.current_task() is not self.task:
            assert self.task is not None
            await asyncio.shield(self.task)

    async def _run(self) -> None:
        while self._waiting:
            wait = self._last_call_ended + self.linger_s - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            batch = self._waiting[:BATCH]
            del self._waiting[:BATCH]
            try:
                await self.send([item for item, _ in batch])
            except DispatchUnavailable:
                self._defer(batch)
            finally:
                self._last_call_ended = time.monotonic()

    @staticmethod
    def _defer(batch: list[tuple[EnqueueItem, Callable[[int], None] | None]]) -> None:
        counts: dict[Callable[[int], None], int] = {}
        for _, deferred in batch:
            if deferred is not None:
                counts[deferred] = counts.get(deferred, 0) + 1
        for deferred, n in counts.items():
            deferred(n)
