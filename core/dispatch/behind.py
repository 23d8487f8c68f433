"""Write-behind indexing of new jobs.

A create is answered once its INSERT has committed (the job is durable then, invariant 1); its
Redis indexing follows in the background. Under a stream of creates a Redis call goes at most
every `linger_s`, carrying every create committed since the last one; a lone create goes at
once. Within the process nothing overtakes it: RedisDispatch holds every other call of this
process back until the indexing already begun has ended (`flushed`), so a caller that creates
and then acquires, cancels or reads the queues sees its own job. Another process may see a new
job a round trip later, as if it had been created a round trip later.

Redis unavailable: a batch that fails is tried once more `retry_s` later (after the adapter
breaker's first probe), so the jobs created around the end of an outage are indexed as soon as
Redis is back instead of waiting for the reconciler; no caller waits for that second try. What
fails twice is left to the reconciler, which indexes every PENDING job Redis lacks; so are the
oldest waiting beyond `max_waiting` (Redis away for long).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence

from core.dispatch.records import EnqueueItem
from core.errors import DispatchUnavailable

BATCH = 5000  # jobs per Redis call
# a stream's call waits this long after the last one ended: at 2 ms a create loop spent a
# fifth of its CPU on these calls (docs/performance.md, benchmarks/create_linger.py)
LINGER_S = 0.010
RETRY_S = 3.0  # after the adapter breaker's first probe (2 s after a failure)
MAX_WAITING = 200_000


class IndexWriter:
    def __init__(self, enqueue: Callable[[Sequence[EnqueueItem]], Awaitable[int]], *,
                 linger_s: float = LINGER_S, max_waiting: int = MAX_WAITING,
                 retry_s: float = RETRY_S) -> None:
        self.send = enqueue  # hands one batch to Redis
        self.linger_s = linger_s
        self.retry_s = retry_s
        self._retry: list[tuple[EnqueueItem, Callable[[int], None] | None]] = []
        self._retry_at = float("inf")  # monotonic time the second try is due
        self.max_waiting = max_waiting
        self._waiting: list[tuple[EnqueueItem, Callable[[int], None] | None]] = []
        self.task: asyncio.Task[None] | None = None
        self._added = 0  # jobs ever added, and ever taken out of the queue (sent or deferred)
        self._taken = 0
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._last_call_ended = 0.0  # monotonic

    @property
    def busy(self) -> bool:
        return self.task is not None and not self.task.done()

    def add(self, items: Sequence[EnqueueItem],
            deferred: Callable[[int], None] | None = None) -> None:
        """Index `items` soon; `deferred(n)` is told of the n left to the reconciler."""
        self._waiting += [(item, deferred) for item in items]
        self._added += len(items)
        if len(self._waiting) > self.max_waiting:
            self._taken_out(self._take(len(self._waiting) - self.max_waiting), deferred=True)
        if not self.busy:
            self.task = asyncio.get_running_loop().create_task(self._run())

    async def flushed(self) -> None:
        """Wait until everything added so far was handed to Redis (or left to the reconciler);
        not for what is added meanwhile, so a steady stream of creates holds no one back."""
        if not self.busy or asyncio.current_task() is self.task or self._taken >= self._added:
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((self._added, done))
        await asyncio.shield(done)

    async def _run(self) -> None:
        try:
            while self._waiting or self._retry:
                if not self._waiting or self._retry_at <= time.monotonic():
                    await self._second_try()
                    continue
                wait = self._last_call_ended + self.linger_s - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                batch = self._take(BATCH)
                try:
                    await self.send([item for item, _ in batch])
                except DispatchUnavailable:
                    if not self._retry:
                        self._retry_at = time.monotonic() + self.retry_s
                    self._retry += batch
                finally:
                    self._last_call_ended = time.monotonic()
                    self._taken_out(batch, deferred=False)
        finally:
            self._taken = self._added  # nothing left behind (or the task was cancelled)
            self._wake()

    async def _second_try(self) -> None:
        """The batches that failed once, together, when their second try is due."""
        if self._retry_at > time.monotonic():
            await asyncio.sleep(self._retry_at - time.monotonic())
        batch, self._retry = self._retry, []
        self._retry_at = float("inf")
        try:
            await self.send([item for item, _ in batch])
        except DispatchUnavailable:
            self._defer(batch)
        finally:
            self._last_call_ended = time.monotonic()

    def _take(self, n: int) -> list[tuple[EnqueueItem, Callable[[int], None] | None]]:
        batch = self._waiting[:n]
        del self._waiting[:n]
        return batch

    def _taken_out(self, batch: list[tuple[EnqueueItem, Callable[[int], None] | None]], *,
                   deferred: bool) -> None:
        """`batch` has left the queue: handed to Redis, or left to the reconciler."""
        if deferred:
            self._defer(batch)
        self._taken += len(batch)
        self._wake()

    def _wake(self) -> None:
        still = []
        for target, done in self._waiters:
            if self._taken >= target:
                if not done.done():
                    done.set_result(None)
            else:
                still.append((target, done))
        self._waiters = still

    @staticmethod
    def _defer(batch: list[tuple[EnqueueItem, Callable[[int], None] | None]]) -> None:
        counts: dict[Callable[[int], None], int] = {}
        for _, deferred in batch:
            if deferred is not None:
                counts[deferred] = counts.get(deferred, 0) + 1
        for deferred, n in counts.items():
            deferred(n)
