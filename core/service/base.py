"""What every part of the job service shares: its stores and settings (typed), the
transaction every state change runs in, the Redis effects applied once it has committed, and
the bookkeeping of store outages and refused (stale) reports.

Every state change is one PostgreSQL transaction guarded by the job's status and, for leased
jobs, its fencing token (invariant 3). Redis effects are applied after the commit and are best
effort: when Redis fails, the reconciler repairs the index later (invariant 2).
New jobs are indexed write-behind (core/dispatch/behind.py): a create is answered once its
INSERT has committed; nothing this process sends to Redis afterwards overtakes the indexing.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import Counter
from collections.abc import AsyncIterator, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from core.dispatch.index import RedisDispatch
from core.dispatch.records import EnqueueItem
from core.errors import DispatchUnavailable
from core.memory.events import MemoryEmitter
from core.settings import Settings
from core.store.outage import Outage
from core.store.pools import StorePool
from core.store.queries import Conn, store_errors


@dataclass
class Effects:
    """Redis changes to apply once the PostgreSQL transaction has committed."""

    forget: list[str] = field(default_factory=list)
    dead: list[str] = field(default_factory=list)
    undead: list[str] = field(default_factory=list)
    enqueue: list[EnqueueItem] = field(default_factory=list)
    reprioritize: list[tuple[str, int]] = field(default_factory=list)
    # cluster counters ("executions:<status>" per attempt ended, "retries" per retry
    # scheduled): sent with the forget, /metrics' counters of how attempts ended
    counts: Counter[str] = field(default_factory=Counter)

    def ended(self, status: str, n: int = 1) -> None:
        self.counts[f"executions:{status}"] += n

    def add_raised(self, rows: Iterable[Mapping[str, Any] | asyncpg.Record]) -> None:
        """Jobs whose dispatch priority changed (priority inheritance)."""
        self.reprioritize += [(str(r["id"]), int(r["priority"])) for r in rows]

    def add_ready(self, rows: Iterable[Mapping[str, Any] | asyncpg.Record]) -> None:
        self.enqueue += [
            EnqueueItem(job_id=str(r["id"]), priority=r["priority"],
                        capability=r["required_capability"], delay_ms=int(r["delay_ms"]),
                        job_type=r["job_type"], tenant=r["tenant"])
            for r in rows
        ]


class ServiceBase:
    """The stores, settings and counters of a job service, and what every operation uses."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        dispatch: RedisDispatch,
        settings: Settings,
        *,
        rng: random.Random | None = None,
        memory: MemoryEmitter | None = None,
    ) -> None:
        self.pool = pool
        self.dispatch = dispatch
        self.settings = settings
        self.memory = memory  # write-behind state memory; None: off
        self.rng = rng or random.Random()
        self.stats: Counter[str] = Counter()
        self._rate_window: tuple[int, float] | None = None  # (limits version, seconds)
        # PostgreSQL outages this process saw: counted here (the API's /metrics shows this
        # process's counters) and cluster-wide in Redis (every process's, best effort)
        self._background: set[asyncio.Task[None]] = set()
        self.store_outage: Outage | None = pool.outage if isinstance(pool, StorePool) else None
        if self.store_outage is not None:
            self.store_outage.subscribe(self._on_store_outage)

    def _on_store_outage(self, down: bool) -> None:
        if not down:
            return
        self.stats["store_outages"] += 1
        try:
            self.in_background(self._count_outage())
        except RuntimeError:  # no loop (a test calling in from outside): counted here only
            return

    def in_background(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run `coro` as a task this service keeps until it ends (RuntimeError, `coro`
        closed unstarted, when no event loop runs)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            coro.close()
            raise
        task = loop.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _count_outage(self) -> None:
        with contextlib.suppress(DispatchUnavailable):
            await self.dispatch.count_event("store_outages")

    async def check_store(self) -> None:
        """Raise StoreUnavailable unless PostgreSQL answers now (one round trip)."""
        await self.pool.fetchval("SELECT 1")

    async def fetch_held(self, query: str, *args: Any) -> list[asyncpg.Record]:
        """One statement of a stream (a worker's leases and completions) on the connection
        the pool keeps for such streams: a pool borrow and return per statement cost about as
        much client time as a small batch's statement (docs/performance.md, item 21)."""
        if isinstance(self.pool, StorePool):
            return await self.pool.fetch_held(query, *args)
        return list(await self.pool.fetch(query, *args))

    # -- transactions and Redis effects ----------------------------------------------------
    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Conn]:
        """One PostgreSQL transaction on a pooled connection."""
        with store_errors():
            async with self.pool.acquire() as conn, conn.transaction():
                yield conn

    def index_later(self, items: list[EnqueueItem]) -> None:
        """Index committed jobs for dispatch in the background (write-behind)."""
        self.dispatch.writer.add(items, self._deferred)

    def _deferred(self, n: int) -> None:
        self.stats["dispatch_deferred"] += n

    async def indexed(self) -> None:
        """Wait until the jobs this process has created so far are indexed in Redis (or left
        to the reconciler, Redis being unavailable)."""
        await self.dispatch.writer.flushed()

    async def apply_effects(self, fx: Effects) -> None:
        """Apply committed changes to the Redis index; Redis down: the reconciler does it."""
        try:
            counts = fx.counts or None
            if fx.forget:
                await self.dispatch.forget(fx.forget, counts=counts)
                counts = None
            if fx.dead:
                await self.dispatch.forget(fx.dead, dead=True, counts=counts)
                counts = None
            if counts:
                await self.dispatch.count_events(counts)
            if fx.undead:
                await self.dispatch.forget_dead(fx.undead)
            if fx.enqueue:
                await self.dispatch.enqueue(fx.enqueue)
            if fx.reprioritize:  # after enqueue: a new job raised by its batch moves too
                await self.dispatch.reprioritize(fx.reprioritize)
        except DispatchUnavailable:
            # PostgreSQL already holds the truth; the reconciler re-indexes later.
            self.stats["dispatch_deferred"] += 1

    async def count_stale(self) -> None:
        """A zombie's late report was refused: count it here and cluster-wide (best effort)."""
        self.stats["stale_rejected"] += 1
        with contextlib.suppress(DispatchUnavailable):
            await self.dispatch.count_event("stale_rejected")
