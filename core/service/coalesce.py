"""Batching across concurrent callers ("smart batching", as in group commit).

A caller submits one item and awaits its own result. While fewer than `max_flushes` flushes
are running, a submission starts one at once (so an idle system adds no delay); the flush
takes what is waiting when it first runs, one pass of the event loop later, so callers
submitting in the same pass (a worker's jobs finishing together) share it. When all flushes
are busy, submissions queue up and the next free flush takes them all (up to `max_batch`) in
one call. Under load a round trip is shared by many callers; at rest each caller gets its
own. No timer is involved.

With `inline_when_idle`, a caller finding no flush running and nobody waiting flushes its
own item in its own task, without the hop to a flush task and the pass of the event loop it
waits (about a tenth of a lone create's time, docs/performance.md); callers arriving
meanwhile are batched as above. It suits callers that rarely arrive in the same pass (single
creates); a worker's completions, which do, keep the gathering pass.

A flush that raises fails every caller in its batch with that exception (the batch is one
statement: all of it happened or none of it). A caller that gave up before its batch was
taken is left out of it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Coalescer(Generic[T, R]):
    def __init__(self, flush: Callable[[list[T]], Awaitable[Sequence[R]]], *,
                 max_batch: int = 1000, max_flushes: int = 2,
                 inline_when_idle: bool = False) -> None:
        if max_batch < 1 or max_flushes < 1:
            raise ValueError("max_batch and max_flushes must be >= 1")
        self._flush = flush
        self.max_batch = max_batch
        self.max_flushes = max_flushes
        self.inline_when_idle = inline_when_idle
        self._inline = 0  # flushes running in their callers' own tasks
        self._waiting: list[tuple[T, asyncio.Future[R]]] = []
        self._running: set[asyncio.Task[None]] = set()
        self._starting = False  # a flush was started and has not taken its batch yet
        self.batches = 0  # flushes done, and items through them: their ratio is the mean batch
        self.items = 0

    async def submit(self, item: T) -> R:
        if (self.inline_when_idle and not self._waiting and not self._running
                and not self._inline and not self._starting):
            return await self._run_inline(item)
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        if not self._starting and len(self._running) + self._inline < self.max_flushes:
            self._start()
        return await future

    async def _run_inline(self, item: T) -> R:
        self._inline += 1
        self.batches += 1
        self.items += 1
        try:
            results = await self._flush([item])
        finally:
            self._inline -= 1
            if self._waiting and not self._starting:
                self._start()
        if len(results) != 1:
            raise RuntimeError(f"a flush of 1 returned {len(results)} results")
        return results[0]

    def _start(self) -> None:
        self._starting = True  # until it runs, the new flush gathers every submission
        task = asyncio.create_task(self._run())
        self._running.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        if (self._waiting and not self._starting
                and len(self._running) + self._inline < self.max_flushes):
            self._start()

    async def _run(self) -> None:
        self._starting = False
        batch = [(i, f) for i, f in self._waiting[:self.max_batch] if not f.done()]
        del self._waiting[:self.max_batch]
        if not batch:
            return
        self.batches += 1
        self.items += len(batch)
        try:
            results = await self._flush([item for item, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"a flush of {len(batch)} returned {len(results)} results")
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as exc:  # handed to every caller of the batch
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)
