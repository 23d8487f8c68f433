"""JobService: the job lifecycle over PostgreSQL (truth) and Redis (dispatch index): create,
lease (core/service/leasing.py), complete (core/service/completing.py), fail with retry or
dead-letter, release, extend, cancel, expire, requeue. Reads and the worker registry are its
other parts (reads.py, registry.py); what they share is core/service/base.py.
"""

from __future__ import annotations

import contextlib
import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from core.dispatch.index import RedisDispatch
from core.errors import (
    DispatchUnavailable,
    InvalidTransition,
    JobNotFound,
    StaleLease,
)
from core.jobs.model import ExecutionStatus, JobSpec, JobStatus, SpecLimits, parse_job_id
from core.jobs.planning import CreateResult, Plan, is_simple, merge_simple, plan_batch
from core.memory.events import MemoryEmitter
from core.service.base import Effects
from core.service.coalesce import Coalescer
from core.service.completing import Completing
from core.service.reads import JobReads
from core.service.registry import WorkerRegistry
from core.settings import Settings
from core.store.inserts import insert_plan
from core.store.queries import Conn, q, store_errors

__all__ = ["CreateResult", "Effects", "FailOutcome", "JobService"]


@dataclass(frozen=True, kw_only=True)
class FailOutcome:
    status: JobStatus  # PENDING (retry scheduled), DEAD or CANCELLED
    retry_in_s: float | None = None
    cancelled_dependents: int = 0


class JobService(Completing, JobReads, WorkerRegistry):
    """The job operations. One instance per process; safe for concurrent use."""

    create_flushes = 3  # concurrent INSERTs of merged single creates

    def __init__(
        self,
        pool: asyncpg.Pool,
        dispatch: RedisDispatch,
        settings: Settings,
        *,
        rng: random.Random | None = None,
        memory: MemoryEmitter | None = None,
    ) -> None:
        super().__init__(pool, dispatch, settings, rng=rng, memory=memory)
        self.spec_limits = SpecLimits(
            known_job_types=settings.accepted_job_types,
            disabled_job_types=settings.job_types - settings.accepted_job_types,
            max_payload_bytes=settings.max_payload_bytes)
        # single creates without dependencies or idempotency keys arriving together share one
        # INSERT and one Redis call
        self._creates: Coalescer[Plan, CreateResult] = Coalescer(
            self._create_merged, max_batch=1000, max_flushes=self.create_flushes,
            inline_when_idle=True)

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
        """Create jobs atomically: all are committed or none; answered then, and indexed in
        Redis write-behind (core/dispatch/behind.py)."""
        return await self._create_plan(plan_batch(specs, self.spec_limits, single=single))

    async def _create_merged(self, plans: list[Plan]) -> list[CreateResult]:
        return await self._create_plan(merge_simple(plans))

    async def _create_plan(self, plan: Plan) -> list[CreateResult]:
        fx = Effects()
        with store_errors():
            results = await insert_plan(self.pool, plan, fx.add_ready, fx.add_raised)
        self.stats["created"] += sum(r.created for r in results)
        if fx.reprioritize:  # jobs it depends on were raised: index with them, in order
            await self.apply_effects(fx)
        elif fx.enqueue:  # only new jobs to index: write-behind
            self.index_later(fx.enqueue)
        if self.memory is not None:
            for v, r in zip(plan.validated, results, strict=True):
                if r.created:
                    self.memory.job_state(r.job_id, {"status": r.status.value,
                                                     "job_type": v.spec.job_type,
                                                     "priority": v.spec.priority})
        return results

    # -- results ----------------------------------------------------------------------------
    async def _stale(self, conn: Conn, job_id: uuid.UUID, token: int) -> Exception:
        row = await conn.fetchrow(q("job_state"), job_id)
        if row is None:
            return JobNotFound(str(job_id))
        await self.count_stale()
        return StaleLease(str(job_id), token, row["status"])

    async def _locked(
        self, conn: Conn, job_id: uuid.UUID, token: int | None
    ) -> asyncpg.Record:
        row = await conn.fetchrow(q("lock_job"), job_id)
        if row is None:
            raise JobNotFound(str(job_id))
        if token is not None and (
            row["status"] != JobStatus.PROCESSING or row["lease_token"] != token
        ):
            await self.count_stale()
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
        async with self.transaction() as conn:
            row = await self._locked(conn, jid, token)
            outcome = await self._fail_locked(conn, row, token, error, status, fx)
        await self.apply_effects(fx)
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
        fx.ended(exec_status)
        await conn.execute(q("count_failure"), row["worker_id"])
        if row["cancel_requested_at"] is not None:
            return await self._cancel_locked(conn, jid, row["cancel_reason"], fx)
        if row["retry_count"] < row["max_retries"]:
            delay_s = self.settings.backoff.delay_s(row["retry_count"], self.rng)
            retry = await conn.fetchrow(q("schedule_retry"), jid, error, delay_s)
            assert retry is not None  # the row is locked
            fx.forget.append(job_id)
            fx.add_ready([{"id": jid, **dict(retry)}])
            fx.counts["retries"] += 1
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
        fx = Effects()
        async with self.transaction() as conn:
            await self._locked(conn, jid, token)
            await self._release_locked(conn, jid, token, reason, fx)
        await self.apply_effects(fx)

    @staticmethod
    async def _release_locked(conn: Conn, jid: uuid.UUID, token: int, reason: str,
                              fx: Effects) -> None:
        """The locked PROCESSING job back to wait, its execution closed RELEASED (its lease out
        of the dispatch index and the job queued again, by `fx`)."""
        fx.forget.append(str(jid))
        await conn.execute(q("close_execution"), token, ExecutionStatus.RELEASED.value, reason)
        fx.ended(ExecutionStatus.RELEASED)
        released = await conn.fetchrow(q("release_job"), jid)
        assert released is not None  # the row is locked and PROCESSING
        fx.add_ready([{**dict(released), "id": jid}])

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
        async with self.transaction() as conn:
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
        await self.apply_effects(fx)
        return status

    async def ack_cancel(self, job_id: str, token: int) -> None:
        """The worker stopped a job whose cancellation was requested."""
        jid = parse_job_id(job_id)
        fx = Effects()
        async with self.transaction() as conn:
            row = await self._locked(conn, jid, token)
            await conn.execute(q("close_execution"), token, ExecutionStatus.CANCELLED.value,
                               "cancelled")
            fx.ended(ExecutionStatus.CANCELLED)
            await self._cancel_locked(conn, jid, row["cancel_reason"], fx)
        await self.apply_effects(fx)

    # -- lease expiry and worker loss (used by the reconciler and the supervisor) -----------
    async def expire_lease(self, job_id: uuid.UUID, token: int, reason: str) -> bool:
        """Fail an attempt whose lease ran out; False if it was renewed or finished meanwhile."""
        fx = Effects()
        async with self.transaction() as conn:
            row = await conn.fetchrow(q("lock_job"), job_id)
            if row is None or row["lease_token"] != token or not row["lease_expired"]:
                return False
            outcome = await self._fail_locked(conn, row, token, reason,
                                              ExecutionStatus.LEASE_EXPIRED, fx)
        self.stats["leases_expired"] += 1
        await self.apply_effects(fx)
        self._remember_failure(str(job_id), row, reason, outcome)
        return True

    async def release_worker(self, worker_id: str, reason: str, *,
                             spend_retry: bool = True) -> int:
        """Fail every lease a lost worker holds (counts as an attempt: a job may be what
        kills its workers), or with `spend_retry=False` give them back as a drain would (a
        quarantined worker's jobs did nothing wrong); returns how many."""
        with store_errors():
            leases = await self.pool.fetch(q("worker_leases"), worker_id)
        n = 0
        for lease in leases:
            fx = Effects()
            async with self.transaction() as conn:
                row = await conn.fetchrow(q("lock_job"), lease["id"])
                if row is None or row["lease_token"] != lease["lease_token"]:
                    continue
                if not spend_retry:
                    await self._release_locked(conn, lease["id"], lease["lease_token"], reason,
                                               fx)
                else:
                    outcome = await self._fail_locked(conn, row, lease["lease_token"], reason,
                                                      ExecutionStatus.LEASE_EXPIRED, fx)
            await self.apply_effects(fx)
            if spend_retry:
                self._remember_failure(str(lease["id"]), row, reason, outcome)
            n += 1
        return n

    # -- dead-letter queue (the state change; listing and purging are in JobReads) ---------
    async def dlq_requeue(self, job_id: str) -> None:
        """Move a dead job back to PENDING with fresh retries."""
        jid = parse_job_id(job_id)
        fx = Effects(undead=[job_id])
        async with self.transaction() as conn:
            rows = await conn.fetch(q("dlq_requeue"), jid)
            if not rows:
                row = await conn.fetchrow(q("job_state"), jid)
                if row is None:
                    raise JobNotFound(job_id)
                raise InvalidTransition(job_id, row["status"], "requeue (not in the DLQ)")
            fx.add_ready(rows)
        self.stats["dlq_requeued"] += 1
        await self.apply_effects(fx)
