"""JobService: the job lifecycle over PostgreSQL (truth) and Redis (dispatch index).

Every state change is one PostgreSQL transaction guarded by the job's status and, for leased
jobs, its fencing token (invariant 3). Redis effects are applied after the commit and are
best effort: when Redis fails, the reconciler repairs the index later (invariant 2) and
acquisition falls back to `get_runnable_jobs ... FOR UPDATE SKIP LOCKED` (invariant 4).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from core.dispatch.index import EnqueueItem, RedisDispatch
from core.errors import (
    DispatchUnavailable,
    InvalidTransition,
    JobNotFound,
    StaleLease,
)
from core.jobs.model import ExecutionStatus, JobSpec, JobStatus, Lease, SpecLimits, parse_job_id
from core.jobs.planning import CreateResult, Plan, is_simple, merge_simple, plan_batch
from core.memory.events import MemoryEmitter
from core.service.coalesce import Coalescer
from core.service.reads import JobReads
from core.service.registry import WorkerRegistry
from core.settings import Settings
from core.store.inserts import insert_plan
from core.store.outage import Outage
from core.store.pools import StorePool
from core.store.queries import Conn, q, store_errors

__all__ = ["CreateResult", "Effects", "FailOutcome", "JobService"]

# a job Redis admitted but PostgreSQL's count refused waits this long before its next try
REFUSED_DELAY_MS = 200


@dataclass
class Effects:
    """Redis changes to apply once the PostgreSQL transaction has committed."""

    forget: list[str] = field(default_factory=list)
    dead: list[str] = field(default_factory=list)
    undead: list[str] = field(default_factory=list)
    enqueue: list[EnqueueItem] = field(default_factory=list)
    reprioritize: list[tuple[str, int]] = field(default_factory=list)

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


@dataclass(frozen=True)
class _Completion:
    job_id: uuid.UUID
    token: int
    result: Any


@dataclass(frozen=True, kw_only=True)
class FailOutcome:
    status: JobStatus  # PENDING (retry scheduled), DEAD or CANCELLED
    retry_in_s: float | None = None
    cancelled_dependents: int = 0


class JobService(JobReads, WorkerRegistry):
    """The job operations. One instance per process; safe for concurrent use."""

    create_flushes = 3  # concurrent INSERTs of merged single creates
    complete_flushes = 2  # concurrent statements of merged completions
    acquire_flushes = 2  # concurrent pops + lease statements of merged acquires

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
        self.spec_limits = SpecLimits(known_job_types=settings.job_types,
                                      max_payload_bytes=settings.max_payload_bytes)
        self.rng = rng or random.Random()
        self.stats: Counter[str] = Counter()
        self._fallback_poll_s = 0.2
        # single creates without dependencies or idempotency keys arriving together share one
        # INSERT and one Redis call
        self._creates: Coalescer[Plan, CreateResult] = Coalescer(
            self._create_merged, max_batch=1000, max_flushes=self.create_flushes)
        # acquires with the same capabilities and lease share one pop and lease statement
        self._acquirers: dict[tuple[tuple[str, ...], float],
                              Coalescer[str, Lease | None]] = {}
        # completions reported together (a worker's slots, a process's workers) share one
        # statement and one Redis call
        self._completions: Coalescer[_Completion, list[asyncpg.Record]] = Coalescer(
            self._complete_merged, max_batch=200, max_flushes=self.complete_flushes)
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
            task = asyncio.get_running_loop().create_task(self._count_outage())
        except RuntimeError:  # no loop (a test calling in from outside): counted here only
            return
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _count_outage(self) -> None:
        with contextlib.suppress(DispatchUnavailable):
            await self.dispatch.count_event("store_outages")

    async def check_store(self) -> None:
        """Raise StoreUnavailable unless PostgreSQL answers now (one round trip)."""
        await self.pool.fetchval("SELECT 1")

    # -- transactions and Redis effects ----------------------------------------------------
    @contextlib.asynccontextmanager
    async def _tx(self) -> AsyncIterator[Conn]:
        with store_errors():
            async with self.pool.acquire() as conn, conn.transaction():
                yield conn

    async def _apply(self, fx: Effects) -> None:
        try:
            if fx.forget:
                await self.dispatch.forget(fx.forget)
            if fx.dead:
                await self.dispatch.forget(fx.dead, dead=True)
            if fx.undead:
                await self.dispatch.forget_dead(fx.undead)
            if fx.enqueue:
                await self.dispatch.enqueue(fx.enqueue)
            if fx.reprioritize:  # after enqueue: a new job raised by its batch moves too
                await self.dispatch.reprioritize(fx.reprioritize)
        except DispatchUnavailable:
            # PostgreSQL already holds the truth; the reconciler re-indexes later.
            self.stats["dispatch_deferred"] += 1

    # -- create -----------------------------------------------------------------------------
    async def create(self, spec: JobSpec) -> CreateResult:
        """Create one job (see `create_batch`). Validated here, for this caller alone; a
        simple job (no dependencies, no idempotency key) is then inserted together with the
        other simple creates waiting at that moment."""
        plan = plan_batch([spec], self.spec_limits, single=True)
        if is_simple(plan):
            return await self._creates.submit(plan)
        return (await self._create_plan(plan))[0]

    async def create_batch(
        self, specs: Sequence[JobSpec], *, single: bool = False
    ) -> list[CreateResult]:
        """Create jobs atomically: all are committed or none; then index them in Redis."""
        return await self._create_plan(plan_batch(specs, self.spec_limits, single=single))

    async def _create_merged(self, plans: list[Plan]) -> list[CreateResult]:
        return await self._create_plan(merge_simple(plans))

    async def _create_plan(self, plan: Plan) -> list[CreateResult]:
        fx = Effects()
        with store_errors():
            results = await insert_plan(self.pool, plan, fx.add_ready, fx.add_raised)
        self.stats["created"] += sum(r.created for r in results)
        await self._apply(fx)
        if self.memory is not None:
            for v, r in zip(plan.validated, results, strict=True):
                if r.created:
                    self.memory.job_state(r.job_id, {"status": r.status.value,
                                                     "job_type": v.spec.job_type,
                                                     "priority": v.spec.priority})
        return results

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
        lease_s: float | None = None,
    ) -> list[Lease]:
        """Lease up to `n` jobs for one worker in one round trip to each store (a worker
        filling its free slots); fewer, or none, when no more may run now."""
        leases = await self._lease_batch([worker_id] * n, sorted(set(capabilities)),
                                         lease_s or self.settings.lease_s)
        return [lease for lease in leases if lease is not None]

    async def _lease_batch(
        self, worker_ids: list[str], caps: list[str], lease_s: float
    ) -> list[Lease | None]:
        if self.store_outage is not None and self.store_outage.down:
            # Jobs popped from Redis while PostgreSQL cannot lease them would wait in the
            # processing set until their Redis lease ran out: ask PostgreSQL first.
            await self.check_store()
        if self.dispatch.available:
            try:
                return await self._acquire_redis(worker_ids, caps, lease_s)
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

    async def _acquire_redis(
        self, worker_ids: list[str], caps: list[str], lease_s: float
    ) -> list[Lease | None]:
        leases: list[Lease | None] = [None] * len(worker_ids)
        wanting = list(range(len(worker_ids)))  # callers still without a lease
        for _ in range(16):
            res = await self.dispatch.acquire(caps, int(lease_s * 1000),
                                              count=len(wanting))
            self._next_due_in_ms = res.next_due_in_ms
            if not res.job_ids:
                break
            takers = wanting[:len(res.job_ids)]
            refused: set[str] = set()
            if res.limited:
                rows, refused = await self._lease_checked(
                    res.job_ids, [worker_ids[i] for i in takers], res.limited, lease_s)
            else:
                with store_errors():
                    rows = await self.pool.fetch(
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

    async def _lease_checked(
        self, job_ids: list[str], workers: list[str], limited: frozenset[str], lease_s: float
    ) -> tuple[list[asyncpg.Record], set[str]]:
        """Lease popped jobs, checking those under a max_running limit against PostgreSQL's
        count too, under the lock the fallback's leases take. Redis cannot see a lease the
        fallback took before the reconciler counted it (workers return from the fallback one
        by one when Redis comes back); this check can. A refused job goes back to wait."""
        ids = [uuid.UUID(j) for j in job_ids]
        async with self._tx() as conn:
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
            await self._apply(fx)
        return rows, refused

    async def _drop_stale_entry(self, job_id: str) -> None:
        """A popped id whose job is not PENDING: keep the index honest, then look further."""
        self.stats["stale_dispatch_entries"] += 1
        with store_errors():
            row = await self.pool.fetchrow(q("job_state"), uuid.UUID(job_id))
        if row is not None and row["status"] == JobStatus.PROCESSING:
            return  # the current holder's processing entry is the same member: leave it
        await self._apply(Effects(forget=[job_id]))

    async def _acquire_postgres(
        self, worker_id: str, caps: list[str], lease_s: float, *, limited: bool | None = None
    ) -> Lease | None:
        """One lease through PostgreSQL alone; `limited`: whether limits exist (None: ask)."""
        async with self._tx() as conn:
            if limited is None:
                limited = bool(await conn.fetchval(q("has_admission_limits")))
            if limited:
                # limits apply here too: one fallback lease at a time counts what runs
                await conn.execute(q("lock_admission"))
                row = await conn.fetchrow(q("lease_runnable_limited"), caps, worker_id, lease_s)
            else:
                row = await conn.fetchrow(q("lease_runnable"), caps, worker_id, lease_s)
        if row is None:
            return None
        self.stats["acquired_postgres"] += 1
        return self._lease(row, worker_id, lease_s, "postgres")

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
            worker_id=worker_id,
            via=via,
        )

    async def wait_for_work(self, max_wait_s: float) -> None:
        """Block until work may be available: a wake-up from Redis, a delayed job falling due,
        or, when Redis is unavailable, the PostgreSQL fallback poll interval."""
        if not self.dispatch.available:
            await asyncio.sleep(min(max_wait_s, self._fallback_poll_s))
            return
        due = getattr(self, "_next_due_in_ms", None)
        timeout = max_wait_s if due is None else min(max_wait_s, due / 1000)
        await self.dispatch.wait_for_work(timeout)

    # -- results ----------------------------------------------------------------------------
    async def _stale(self, conn: Conn, job_id: uuid.UUID, token: int) -> Exception:
        row = await conn.fetchrow(q("job_state"), job_id)
        if row is None:
            return JobNotFound(str(job_id))
        await self._count_stale()
        return StaleLease(str(job_id), token, row["status"])

    async def _count_stale(self) -> None:
        """A zombie's late report was refused: count it here and cluster-wide (best effort)."""
        self.stats["stale_rejected"] += 1
        with contextlib.suppress(DispatchUnavailable):
            await self.dispatch.count_event("stale_rejected")

    async def complete(self, job_id: str, token: int, result: Any = None) -> None:
        """Record success; only the current lease's token is accepted. Completions arriving
        together are recorded in one statement; each caller gets its own outcome."""
        jid = parse_job_id(job_id)
        with store_errors():
            rows = await self._completions.submit(_Completion(jid, token, result))
        if not rows[0]["ok"]:
            if rows[0]["job_status"] is None:
                raise JobNotFound(job_id)
            await self._count_stale()
            raise StaleLease(job_id, token, rows[0]["job_status"])
        self.stats["completed"] += 1
        if self.memory is not None:
            self.memory.job_completed(job_id, result)

    async def _complete_merged(self, batch: list[_Completion]) -> list[list[asyncpg.Record]]:
        """Run completions as one statement, then apply their Redis effects in one go."""
        if len(batch) == 1:
            c = batch[0]
            per: list[list[asyncpg.Record]] = [
                await self.pool.fetch(q("complete_job"), c.job_id, c.token, c.result)]
        else:
            try:
                rows = await self.pool.fetch(
                    q("complete_jobs"), [c.job_id for c in batch], [c.token for c in batch],
                    [c.result for c in batch])
            except asyncpg.DeadlockDetectedError:
                # two batches released shared dependents in opposite orders: one was rolled
                # back whole; its completions go one by one
                self.stats["complete_batch_deadlocks"] += 1
                per = [await self.pool.fetch(q("complete_job"), c.job_id, c.token, c.result)
                       for c in batch]
            else:
                per = [[] for _ in batch]
                for r in rows:
                    per[r["ord"] - 1].append(r)
        fx = Effects()
        for c, rows_of in zip(batch, per, strict=True):
            if rows_of[0]["ok"]:
                fx.forget.append(str(c.job_id))
                fx.add_ready({**dict(r), "id": r["released_id"]}
                             for r in rows_of if r["released_id"])
        await self._apply(fx)
        return per

    async def _locked(
        self, conn: Conn, job_id: uuid.UUID, token: int | None
    ) -> asyncpg.Record:
        row = await conn.fetchrow(q("lock_job"), job_id)
        if row is None:
            raise JobNotFound(str(job_id))
        if token is not None and (
            row["status"] != JobStatus.PROCESSING or row["lease_token"] != token
        ):
            await self._count_stale()
            raise StaleLease(str(job_id), token, row["status"])
        return row

    async def fail(
        self,
        job_id: str,
        token: int,
        error: str,
        *,
        status: ExecutionStatus = ExecutionStatus.FAILED,
    ) -> FailOutcome:
        """Record a failed attempt: retry with backoff, or dead-letter when retries are spent."""
        jid = parse_job_id(job_id)
        fx = Effects()
        async with self._tx() as conn:
            row = await self._locked(conn, jid, token)
            outcome = await self._fail_locked(conn, row, token, error, status, fx)
        await self._apply(fx)
        self._remember_failure(job_id, row, error, outcome)
        return outcome

    def _remember_failure(self, job_id: str, row: asyncpg.Record, error: str,
                          outcome: FailOutcome) -> None:
        if self.memory is None:
            return
        if outcome.status == JobStatus.PENDING:
            self.memory.job_state(job_id, {"status": "PENDING", "retry_count":
                                           row["retry_count"] + 1, "last_error": error,
                                           "retry_in_s": outcome.retry_in_s})
        elif outcome.status == JobStatus.DEAD:
            self.memory.job_failed(job_id, {"error": error, "job_type": row["job_type"],
                                            "retry_count": row["retry_count"],
                                            "worker_id": row["worker_id"]})
        else:
            self.memory.job_finished(job_id)

    async def _fail_locked(
        self,
        conn: Conn,
        row: asyncpg.Record,
        token: int,
        error: str,
        exec_status: ExecutionStatus,
        fx: Effects,
    ) -> FailOutcome:
        jid, job_id = row["id"], str(row["id"])
        await conn.execute(q("close_execution"), token, exec_status.value, error)
        await conn.execute(q("count_failure"), row["worker_id"])
        if row["cancel_requested_at"] is not None:
            return await self._cancel_locked(conn, jid, row["cancel_reason"], fx)
        if row["retry_count"] < row["max_retries"]:
            delay_s = self.settings.backoff.delay_s(row["retry_count"], self.rng)
            retry = await conn.fetchrow(q("schedule_retry"), jid, error, delay_s)
            assert retry is not None  # the row is locked
            fx.forget.append(job_id)
            fx.add_ready([{"id": jid, **dict(retry)}])
            self.stats["retried"] += 1
            return FailOutcome(status=JobStatus.PENDING, retry_in_s=delay_s)
        await conn.execute(q("mark_dead"), jid, error)
        cancelled = await conn.fetch(q("cancel_dependents"), jid, f"dependency {job_id} is DEAD")
        await self._uninherit(conn, [jid, *(r["id"] for r in cancelled)], fx)
        if self.memory is not None:
            for r in cancelled:
                self.memory.job_finished(str(r["id"]))
        fx.dead.append(job_id)
        fx.forget += [str(r["id"]) for r in cancelled]
        self.stats["dead"] += 1
        return FailOutcome(status=JobStatus.DEAD, cancelled_dependents=len(cancelled))

    @staticmethod
    async def _uninherit(conn: Conn, gone: list[uuid.UUID], fx: Effects) -> None:
        """Jobs that no longer wait (cancelled, or cancelled with a DEAD dependency) stop
        lending their priority to what they waited on."""
        fx.add_raised(await conn.fetch(q("inherit_priority"), gone, False))

    async def _cancel_locked(
        self, conn: Conn, jid: uuid.UUID, reason: str | None, fx: Effects
    ) -> FailOutcome:
        await conn.execute(q("mark_cancelled"), jid, reason or "cancelled")
        cancelled = await conn.fetch(q("cancel_dependents"), jid, f"dependency {jid} cancelled")
        await self._uninherit(conn, [jid, *(r["id"] for r in cancelled)], fx)
        fx.forget += [str(jid), *(str(r["id"]) for r in cancelled)]
        if self.memory is not None:
            for job in (jid, *(r["id"] for r in cancelled)):
                self.memory.job_finished(str(job))
        self.stats["cancelled"] += 1
        return FailOutcome(status=JobStatus.CANCELLED, cancelled_dependents=len(cancelled))

    async def release(self, job_id: str, token: int, reason: str) -> None:
        """Give a lease back without spending a retry (graceful drain)."""
        jid = parse_job_id(job_id)
        fx = Effects(forget=[job_id])
        async with self._tx() as conn:
            await self._locked(conn, jid, token)
            await conn.execute(q("close_execution"), token, ExecutionStatus.RELEASED.value, reason)
            released = await conn.fetchrow(q("release_job"), jid)
            assert released is not None  # the row is locked and PROCESSING
            fx.add_ready([{**dict(released), "id": jid}])
        await self._apply(fx)

    async def extend(self, job_id: str, token: int, *, lease_s: float | None = None) -> bool:
        """Extend a lease; returns True when the job's cancellation has been requested."""
        jid = parse_job_id(job_id)
        lease_s = lease_s or self.settings.lease_s
        with store_errors():
            async with self.pool.acquire() as conn:
                row = await conn.fetchrow(q("extend_lease"), jid, token, lease_s)
                if row is None:
                    raise await self._stale(conn, jid, token)
        with contextlib.suppress(DispatchUnavailable):
            await self.dispatch.extend(job_id, int(lease_s * 1000))
        return bool(row["cancel_requested"])

    # -- cancellation -----------------------------------------------------------------------
    async def cancel(self, job_id: str, reason: str = "cancelled by request") -> JobStatus:
        """Cancel a job: queued ones at once (CANCELLED), running ones cooperatively (the
        worker learns it at its next lease extension; PROCESSING is returned)."""
        jid = parse_job_id(job_id)
        fx = Effects()
        async with self._tx() as conn:
            row = await self._locked(conn, jid, None)
            status = JobStatus(row["status"])
            if status.terminal:
                raise InvalidTransition(job_id, status, "cancel")
            if status == JobStatus.PROCESSING:
                await conn.execute(q("request_cancel"), jid, reason)
                self.stats["cancel_requested"] += 1
            else:
                await self._cancel_locked(conn, jid, reason, fx)
                status = JobStatus.CANCELLED
        await self._apply(fx)
        return status

    async def ack_cancel(self, job_id: str, token: int) -> None:
        """The worker stopped a job whose cancellation was requested."""
        jid = parse_job_id(job_id)
        fx = Effects()
        async with self._tx() as conn:
            row = await self._locked(conn, jid, token)
            await conn.execute(q("close_execution"), token, ExecutionStatus.CANCELLED.value,
                               "cancelled")
            await self._cancel_locked(conn, jid, row["cancel_reason"], fx)
        await self._apply(fx)

    # -- lease expiry and worker loss (used by the reconciler and the supervisor) -----------
    async def expire_lease(self, job_id: uuid.UUID, token: int, reason: str) -> bool:
        """Fail an attempt whose lease ran out; False if it was renewed or finished meanwhile."""
        fx = Effects()
        async with self._tx() as conn:
            row = await conn.fetchrow(q("lock_job"), job_id)
            if row is None or row["lease_token"] != token or not row["lease_expired"]:
                return False
            outcome = await self._fail_locked(conn, row, token, reason,
                                              ExecutionStatus.LEASE_EXPIRED, fx)
        self.stats["leases_expired"] += 1
        await self._apply(fx)
        self._remember_failure(str(job_id), row, reason, outcome)
        return True

    async def release_worker(self, worker_id: str, reason: str) -> int:
        """Fail every lease a lost worker holds (counts as an attempt); returns how many."""
        with store_errors():
            leases = await self.pool.fetch(q("worker_leases"), worker_id)
        n = 0
        for lease in leases:
            fx = Effects()
            async with self._tx() as conn:
                row = await conn.fetchrow(q("lock_job"), lease["id"])
                if row is None or row["lease_token"] != lease["lease_token"]:
                    continue
                outcome = await self._fail_locked(conn, row, lease["lease_token"], reason,
                                                  ExecutionStatus.LEASE_EXPIRED, fx)
            await self._apply(fx)
            self._remember_failure(str(lease["id"]), row, reason, outcome)
            n += 1
        return n

    # -- dead-letter queue (the state change; listing and purging are in JobReads) ---------
    async def dlq_requeue(self, job_id: str) -> None:
        """Move a dead job back to PENDING with fresh retries."""
        jid = parse_job_id(job_id)
        fx = Effects(undead=[job_id])
        async with self._tx() as conn:
            rows = await conn.fetch(q("dlq_requeue"), jid)
            if not rows:
                row = await conn.fetchrow(q("job_state"), jid)
                if row is None:
                    raise JobNotFound(job_id)
                raise InvalidTransition(job_id, row["status"], "requeue (not in the DLQ)")
            fx.add_ready(rows)
        self.stats["dlq_requeued"] += 1
        await self._apply(fx)
