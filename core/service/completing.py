"""Recording successes: a completion is accepted only with the current lease's token;
completions reported together share one statement (complete_jobs, migration 012), and a
worker's completions can ride with its next lease (`report_and_acquire`: complete_and_lease,
migration 016), so a worker filling the slots its finished jobs freed makes one round trip
and one commit to PostgreSQL where it made two.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import asyncpg

from core.errors import JobHarnessError, JobNotFound, StaleLease, StoreUnavailable
from core.jobs.model import ExecutionStatus, Lease, parse_job_id
from core.service.base import Effects
from core.service.coalesce import Coalescer
from core.service.leasing import Leasing, Riders
from core.store.queries import q, store_errors


@dataclass(frozen=True)
class _Completion:
    job_id: uuid.UUID
    token: int
    result: Any


@dataclass
class Reported:
    """What `report_and_acquire` did: the new leases; per completion None (recorded) or the
    error `complete` would have raised; `error` when the lease failed for want of a store."""

    leases: list[Lease]
    outcomes: list[JobHarnessError | None]
    error: StoreUnavailable | None = None


def _per_completion(batch: Sequence[Any], rows: Iterable[asyncpg.Record]
                    ) -> list[list[asyncpg.Record]]:
    """complete_jobs' rows grouped per completion, each completion's own row first."""
    per: list[list[asyncpg.Record]] = [[] for _ in batch]
    for r in rows:
        per[r["ord"] - 1].append(r)
    return per


class Completing(Leasing):
    complete_flushes = 2  # concurrent statements of merged completions

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # completions reported together (a worker's slots, a process's workers) share one
        # statement and one Redis call
        self._completions: Coalescer[_Completion, list[asyncpg.Record]] = Coalescer(
            self._complete_merged, max_batch=200, max_flushes=self.complete_flushes)

    if TYPE_CHECKING:  # the worker registry's (registry.py), beside this in JobService
        async def record_evidence(self, worker_id: str, kind: str, detail: str,
                                  job_id: uuid.UUID | str | None = None) -> None: ...

    async def complete(self, job_id: str, token: int, result: Any = None, *,
                       worker_id: str | None = None) -> None:
        """Record success; only the current lease's token is accepted. Completions arriving
        together are recorded in one statement; each caller gets its own outcome. A refused
        completion from `worker_id` with a token no lease of this job ever gave that worker
        is recorded as evidence against it (forged, not merely stale)."""
        c = _Completion(parse_job_id(job_id), token, result)
        with store_errors():
            rows = await self._completions.submit(c)
        if not rows[0]["ok"]:
            await self._refused(c, rows[0], worker_id)
        self._completed(c)

    def _completed(self, c: _Completion) -> None:
        self.stats["completed"] += 1
        if self.memory is not None:
            self.memory.job_completed(str(c.job_id), c.result)

    async def _refused(self, c: _Completion, row: asyncpg.Record,
                       worker_id: str | None) -> None:
        """Raise the error a refused completion gets (its own row says why)."""
        job_id = str(c.job_id)
        if row["job_status"] is None:
            raise JobNotFound(job_id)
        await self.count_stale()
        if worker_id is not None:
            await self._check_token(worker_id, c.job_id, c.token)
        raise StaleLease(job_id, c.token, row["job_status"])

    async def _check_token(self, worker_id: str, jid: uuid.UUID, token: int) -> None:
        with store_errors():
            owner = await self.pool.fetchrow(q("token_owner"), token)
        if owner is not None and owner["job_id"] == jid and owner["worker_id"] == worker_id:
            return  # its own lease, superseded: a zombie's late result, not a forgery
        whose = "no lease ever had it" if owner is None else (
            f"it was worker {owner['worker_id']}'s lease of job {owner['job_id']}")
        await self.record_evidence(worker_id, "forged_token", f"completed job {jid} with lease "
                                   f"token {token}: {whose}", jid)

    async def _complete_merged(self, batch: list[_Completion]) -> list[list[asyncpg.Record]]:
        """Run completions as one statement, then apply their Redis effects in one go."""
        try:
            per = await self._complete_rows(batch)
        except asyncpg.DeadlockDetectedError:
            # two batches released shared dependents in opposite orders: one was rolled
            # back whole; its completions go one by one
            self.stats["complete_batch_deadlocks"] += 1
            per = [(await self._complete_rows([c]))[0] for c in batch]
        await self._completion_effects(batch, per)
        return per

    async def _completion_effects(self, batch: Sequence[_Completion],
                                  per: list[list[asyncpg.Record]], *,
                                  later: bool = False) -> None:
        """The completed jobs out of the Redis index (with the next acquisition when `later`
        and no dependent was released), released dependents into it."""
        fx = Effects()
        for c, rows_of in zip(batch, per, strict=True):
            if rows_of[0]["ok"]:
                fx.forget.append(str(c.job_id))
                fx.ended(ExecutionStatus.COMPLETED)
                fx.add_ready({**dict(r), "id": r["released_id"]}
                             for r in rows_of if r["released_id"])
        if later and not fx.enqueue:
            self.forget_later(fx.forget, fx.counts)
        else:
            await self.apply_effects(fx)

    async def _complete_rows(self, batch: list[_Completion]) -> list[list[asyncpg.Record]]:
        rows = await self.fetch_held(q("complete_jobs"), [c.job_id for c in batch],
                                     [c.token for c in batch], [c.result for c in batch])
        return _per_completion(batch, rows)

    # -- completions riding with the next lease ---------------------------------------------
    async def report_and_acquire(
        self, worker_id: str, n: int, capabilities: Iterable[str],
        done: Sequence[tuple[str, int, Any]], *, lease_s: float | None = None,
    ) -> Reported:
        """A worker's completions (job id, token, result) and the lease of up to `n` jobs:
        when Redis gives jobs, one PostgreSQL statement records the completions and leases
        them (complete_and_lease); otherwise (no job to lease, limits to check, the PostgreSQL
        fallback, a deadlock among completions) the completions go as `complete` sends them,
        after the lease. Each completion gets the outcome `complete` would give it."""
        batch = [_Completion(parse_job_id(j), t, r) for j, t, r in done]
        if not batch:
            return Reported(leases=await self.acquire_many(worker_id, n, capabilities,
                                                           lease_s=lease_s), outcomes=[])
        riders = Riders(ids=[c.job_id for c in batch], tokens=[c.token for c in batch],
                        results=[c.result for c in batch])
        reported = Reported(leases=[], outcomes=[])
        try:
            reported.leases = await self.acquire_many(
                worker_id, n, capabilities, lease_s=lease_s, riders=riders)
        except StoreUnavailable as exc:
            reported.error = exc
        if riders.rows is not None:
            per = _per_completion(batch, riders.rows)
            # the worker's next lease call carries their forget (one Redis call per cycle)
            await self._completion_effects(batch, per, later=True)
        elif reported.error is not None:
            reported.outcomes = [reported.error] * len(batch)
            return reported
        else:
            try:
                with store_errors():
                    per = await self._complete_merged(batch)
            except StoreUnavailable as exc:
                reported.outcomes = [exc] * len(batch)
                return reported
        for c, rows_of in zip(batch, per, strict=True):
            try:
                if not rows_of[0]["ok"]:
                    await self._refused(c, rows_of[0], worker_id)
                self._completed(c)
                reported.outcomes.append(None)
            except JobHarnessError as exc:
                reported.outcomes.append(exc)
        return reported
