"""Leasing jobs: the best runnable job a worker may run, popped from Redis (flows, limits,
fair shares: dispatch/lua/acquire.lua) and leased in PostgreSQL with a new fencing token, or,
while Redis is unavailable, leased through PostgreSQL alone (`get_runnable_jobs ... FOR UPDATE
SKIP LOCKED`, invariant 4). Callers asking at the same moment share one pop and one lease
statement.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import asyncpg

from core.errors import DispatchUnavailable
from core.jobs.model import JobStatus, Lease
from core.service.base import Effects, ServiceBase
from core.service.coalesce import Coalescer
from core.store.queries import Conn, q, store_errors

# a job Redis admitted but PostgreSQL's count refused waits this long before its next try
REFUSED_DELAY_MS = 200
FALLBACK_POLL_S = 0.2  # how often an idle worker asks PostgreSQL while Redis is away
# completions waiting to ride with the process's next acquisition go on their own after this
FORGET_LATER_S = 0.05


@dataclass
class Riders:
    """Completions (complete_jobs' arguments) to carry with the next lease statement
    (complete_and_lease); `rows` holds their complete_jobs rows once carried."""

    ids: list[uuid.UUID]
    tokens: list[int]
    results: list[Any]
    rows: list[asyncpg.Record] | None = None


class Leasing(ServiceBase):
    acquire_flushes = 2  # concurrent pops + lease statements of merged acquires

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # acquires with the same capabilities and lease share one pop and lease statement
        self._acquirers: dict[tuple[tuple[str, ...], float],
                              Coalescer[str, Lease | None]] = {}
        self.next_due_in_ms: int | None = None  # the next delayed job falls due then
        # completed jobs whose Redis forget rides with the next acquisition (forget_later)
        self._forgets: list[str] = []
        self._forget_counts: Counter[str] = Counter()
        self._forget_timer: asyncio.TimerHandle | None = None

    # -- acquire ----------------------------------------------------------------------------
    async def acquire(
        self, worker_id: str, capabilities: Iterable[str] = (), *, lease_s: float | None = None
    ) -> Lease | None:
        """Lease the best runnable job this worker may run, or return None. Callers asking
        at the same moment with the same capabilities share one Redis pop and one lease
        statement."""
        lease_s = lease_s or self.settings.lease_s
        caps = tuple(sorted(set(capabilities)))
        group = self._acquirers.get((caps, lease_s))
        if group is None:
            async def flush(worker_ids: list[str]) -> list[Lease | None]:
                return await self._lease_batch(worker_ids, list(caps), lease_s)

            group = self._acquirers[(caps, lease_s)] = Coalescer(
                flush, max_batch=100, max_flushes=self.acquire_flushes)
        return await group.submit(worker_id)

    async def acquire_many(
        self, worker_id: str, n: int, capabilities: Iterable[str] = (), *,
        lease_s: float | None = None, riders: Riders | None = None,
    ) -> list[Lease]:
        """Lease up to `n` jobs for one worker in one round trip to each store (a worker
        filling its free slots); fewer, or none, when no more may run now. `riders`: the
        worker's completions, carried by the lease statement when it can (see Riders)."""
        leases = await self._lease_batch([worker_id] * n, sorted(set(capabilities)),
                                         lease_s or self.settings.lease_s, riders)
        return [lease for lease in leases if lease is not None]

    async def _lease_batch(
        self, worker_ids: list[str], caps: list[str], lease_s: float,
        riders: Riders | None = None,
    ) -> list[Lease | None]:
        if self.store_outage is not None and self.store_outage.down:
            # Jobs popped from Redis while PostgreSQL cannot lease them would wait in the
            # processing set until their Redis lease ran out: ask PostgreSQL first.
            await self.check_store()
        if self.dispatch.available:
            try:
                return await self._acquire_redis(worker_ids, caps, lease_s, riders)
            except DispatchUnavailable:
                self.stats["redis_acquire_failed"] += 1
        leases: list[Lease | None] = [None] * len(worker_ids)
        if not self.settings.pg_fallback:
            return leases  # a deliberately broken core, for drills: Redis or nothing
        with store_errors():  # asked once for the batch, not once per lease
            limited = bool(await self.pool.fetchval(q("has_admission_limits")))
        for i, worker_id in enumerate(worker_ids):
            leases[i] = await self._acquire_postgres(worker_id, caps, lease_s, limited=limited)
            if leases[i] is None:
                break
        return leases

    # -- completions' forgets carried by the next acquisition -------------------------------
    def forget_later(self, job_ids: list[str], counts: Counter[str]) -> None:
        """Completed jobs to take out of the Redis index with this process's next acquisition
        (acquire.lua runs forget.lua's removal first): a worker's cycle then makes one Redis
        call where it made two. Sent on their own if no acquisition comes within
        FORGET_LATER_S, or when `send_forgets` is called (a worker going idle or stopping)."""
        if not job_ids and not counts:  # every completion refused: nothing to carry
            return
        self._forgets += job_ids
        self._forget_counts.update(counts)
        if self._forget_timer is None:
            self._forget_timer = asyncio.get_running_loop().call_later(
                FORGET_LATER_S, self._forgets_due)

    def _take_forgets(self) -> tuple[list[str], Counter[str]]:
        if self._forget_timer is not None:
            self._forget_timer.cancel()
            self._forget_timer = None
        taken = self._forgets, self._forget_counts
        self._forgets, self._forget_counts = [], Counter()
        return taken

    def _forgets_due(self) -> None:
        self._forget_timer = None
        self.in_background(self.send_forgets())

    async def send_forgets(self) -> None:
        """Send the waiting forgets now, on their own."""
        ids, counts = self._take_forgets()
        if ids or counts:
            await self.apply_effects(Effects(forget=ids, counts=counts))

    async def _acquire_redis(
        self, worker_ids: list[str], caps: list[str], lease_s: float,
        riders: Riders | None = None,
    ) -> list[Lease | None]:
        leases: list[Lease | None] = [None] * len(worker_ids)
        wanting = list(range(len(worker_ids)))  # callers still without a lease
        forget, counts = self._take_forgets()
        for _ in range(16):
            try:
                res = await self.dispatch.acquire(caps, int(lease_s * 1000),
                                                  count=len(wanting), forget=forget,
                                                  counts=counts)
            except DispatchUnavailable:
                if forget or counts:  # lost with the call: the reconciler repairs the index
                    self.stats["dispatch_deferred"] += 1
                raise
            forget, counts = [], Counter()
            self.next_due_in_ms = res.next_due_in_ms
            if not res.job_ids:
                break
            takers = wanting[:len(res.job_ids)]
            refused: set[str] = set()
            if res.limited:
                rows, refused = await self._lease_checked(
                    res.job_ids, [worker_ids[i] for i in takers], res.limited, lease_s)
            elif riders is not None and riders.rows is None:
                rows = await self._complete_and_lease(
                    riders, [uuid.UUID(j) for j in res.job_ids],
                    [worker_ids[i] for i in takers], lease_s)
            else:
                with store_errors():
                    rows = await self.fetch_held(
                        q("lease_jobs"), [uuid.UUID(j) for j in res.job_ids],
                        [worker_ids[i] for i in takers], lease_s, "redis")
            by_id = {str(r["id"]): r for r in rows}
            self.stats["acquired_redis"] += len(rows)
            missed = []
            for i, job_id in zip(takers, res.job_ids, strict=True):
                row = by_id.get(job_id)
                if row is None:
                    if job_id not in refused:
                        await self._drop_stale_entry(job_id)
                    missed.append(i)
                else:
                    leases[i] = self._lease(row, worker_ids[i], lease_s, "redis")
            # callers beyond what Redis returned get nothing: nothing more may run now
            wanting = missed
            if not wanting:
                break
        return leases

    async def _complete_and_lease(
        self, riders: Riders, ids: list[uuid.UUID], workers: list[str], lease_s: float
    ) -> list[asyncpg.Record]:
        """The lease statement carrying the riders' completions; their rows go to
        `riders.rows`. A deadlock among the completions (shared dependents released in
        opposite orders by another batch) rolls the whole statement back: then the lease goes
        alone and the completions are left to their own statement."""
        with store_errors():
            try:
                rows = await self.fetch_held(q("complete_and_lease"), riders.ids, riders.tokens,
                                             riders.results, ids, workers, lease_s, "redis")
            except asyncpg.DeadlockDetectedError:
                self.stats["complete_batch_deadlocks"] += 1
                return await self.fetch_held(q("lease_jobs"), ids, workers, lease_s, "redis")
        riders.rows = [r for r in rows if r["kind"] == "c"]
        self.stats["completions_carried"] += len(riders.ids)
        return [r for r in rows if r["kind"] == "l"]

    async def _lease_checked(
        self, job_ids: list[str], workers: list[str], limited: frozenset[str], lease_s: float
    ) -> tuple[list[asyncpg.Record], set[str]]:
        """Lease popped jobs, checking those under a max_running limit against PostgreSQL's
        count too, under the lock the fallback's leases take. Redis cannot see a lease the
        fallback took before the reconciler counted it (workers return from the fallback one
        by one when Redis comes back); this check can. A refused job goes back to wait."""
        ids = [uuid.UUID(j) for j in job_ids]
        async with self.transaction() as conn:
            await conn.execute(q("lock_admission"))
            checked = await conn.fetch(q("admit_limited"),
                                       [ids[k] for k, j in enumerate(job_ids) if j in limited])
            refused = {str(r["id"]) for r in checked if not r["admitted"]}
            keep = [k for k, j in enumerate(job_ids) if j not in refused]
            rows = await conn.fetch(q("lease_jobs"), [ids[k] for k in keep],
                                    [workers[k] for k in keep], lease_s, "redis")
        if refused:
            self.stats["limit_refused_by_postgres"] += len(refused)
            fx = Effects(forget=sorted(refused))
            fx.add_ready({**dict(r), "delay_ms": REFUSED_DELAY_MS}
                         for r in checked if not r["admitted"])
            await self.apply_effects(fx)
        return rows, refused

    async def _drop_stale_entry(self, job_id: str) -> None:
        """A popped id whose job is not PENDING: keep the index honest, then look further."""
        self.stats["stale_dispatch_entries"] += 1
        with store_errors():
            row = await self.pool.fetchrow(q("job_state"), uuid.UUID(job_id))
        if row is not None and row["status"] == JobStatus.PROCESSING:
            return  # the current holder's processing entry is the same member: leave it
        await self.apply_effects(Effects(forget=[job_id]))

    async def _acquire_postgres(
        self, worker_id: str, caps: list[str], lease_s: float, *, limited: bool | None = None
    ) -> Lease | None:
        """One lease through PostgreSQL alone; `limited`: whether limits exist (None: ask).
        Without limits the lease is one statement (atomic alone: no BEGIN and COMMIT round
        trips), which matters while a whole fleet leases this way."""
        if limited is None:
            with store_errors():
                limited = bool(await self.pool.fetchval(q("has_admission_limits")))
        if limited:
            async with self.transaction() as conn:
                # limits apply here too: one fallback lease at a time counts what runs
                await conn.execute(q("lock_admission"))
                row = await conn.fetchrow(q("lease_runnable_limited"), caps, worker_id, lease_s,
                                          await self._rate_window_s(conn))
        else:
            with store_errors():
                row = await self.pool.fetchrow(q("lease_runnable"), caps, worker_id, lease_s)
        if row is None:
            return None
        self.stats["acquired_postgres"] += 1
        return self._lease(row, worker_id, lease_s, "postgres")

    async def _rate_window_s(self, conn: Conn) -> float:
        """The widest rate-limit window, read again only when the limits' version moved (so a
        fallback lease does not read every limit)."""
        version = int(await conn.fetchval(q("limits_version")))
        if self._rate_window is None or self._rate_window[0] != version:
            self._rate_window = (version, float(await conn.fetchval(q("max_rate_window"))))
        return self._rate_window[1]

    def _lease(self, row: asyncpg.Record, worker_id: str, lease_s: float, via: str) -> Lease:
        if self.memory is not None:
            self.memory.job_state(str(row["id"]), {
                "status": "PROCESSING", "job_type": row["job_type"], "worker_id": worker_id,
                "attempt": row["retry_count"] + 1, "lease_token": row["lease_token"]})
        return Lease(
            job_id=str(row["id"]),
            token=row["lease_token"],
            attempt=row["retry_count"] + 1,
            job_type=row["job_type"],
            payload=row["payload"],
            priority=row["priority"],
            timeout_s=row["timeout_s"],
            lease_s=lease_s,
            capability=row["required_capability"],
            worker_id=worker_id,
            via=via,
        )

    async def wait_for_work(self, max_wait_s: float) -> None:
        """Block until work may be available: a wake-up from Redis, a delayed job falling due,
        or, when Redis is unavailable, the PostgreSQL fallback poll interval."""
        if not self.dispatch.available:
            await asyncio.sleep(min(max_wait_s, FALLBACK_POLL_S))
            return
        due = self.next_due_in_ms
        timeout = max_wait_s if due is None else min(max_wait_s, due / 1000)
        await self.dispatch.wait_for_work(timeout)
