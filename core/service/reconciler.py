"""The reconciler of invariant 2: it makes Redis agree with PostgreSQL again after any fault.

One pass: expire leases past their deadline (PostgreSQL clock; a holder that let one lapse
while heartbeating is recorded as making no progress), release WAITING jobs whose
dependencies are done, re-index PENDING jobs that Redis lost, drop Redis entries with no live
job behind them, mirror the scheduling limits and recount what runs under them (recording
leases PostgreSQL holds that Redis lacks), mark workers with stale PostgreSQL heartbeats, and
purge old DLQ entries. Redis is read before PostgreSQL, so an entry enqueued after its job's
commit is never mistaken for an orphan.

What a pass reads is bounded by pages, not by the backlog or the history (invariant 8): the
PENDING jobs are swept a page of `sweep` ids at a time in id order (idx_jobs_status is (status,
id)), the Redis sets and the metadata hash with SCAN cursors, each side looked up by key on
the other; the sweeps resume where the last pass stopped. A page that is mostly repairs (Redis
lost its data) lets the sweep go on within the pass, so a rebuild takes one pass whatever its
size. `benchmarks/reconcile_cost.py` measures a pass at 1 and at 100,000 jobs queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from dataclasses import asdict, dataclass
from typing import Any

from core.dispatch.records import flow_of
from core.errors import DispatchUnavailable, StoreUnavailable
from core.jobs.model import JobStatus
from core.service.base import Effects
from core.service.jobs import JobService
from core.service.limits import list_limits, mirror_of
from core.store.queries import q

EXPIRE_BATCH = 500
SWEEP = 1000  # jobs a sweep step reads on one side (and looks up by key on the other)
ZERO_ID = uuid.UUID(int=0)
LIVE = (JobStatus.PENDING, JobStatus.PROCESSING)
log = logging.getLogger("jobharness.reconciler")


@dataclass
class ReconcileReport:
    leases_expired: int = 0
    released_waiting: int = 0
    reindexed: int = 0
    orphans_removed: int = 0
    stale_workers: int = 0
    dlq_purged: int = 0
    leases_recorded: int = 0  # leases the processing set lacked (counted against limits)
    held_dropped: int = 0  # limit records of leases no longer held
    swept: int = 0  # entries the sweeps read this pass (bounded: pages of `sweep`)
    limits_mirrored: int = 0  # limits written to Redis (only when the table changed)
    redis_reachable: bool = True

    def as_dict(self) -> dict[str, int | bool]:
        return asdict(self)


class Reconciler:
    def __init__(self, service: JobService, *, sweep: int = SWEEP) -> None:
        if sweep < 1:
            raise ValueError(f"sweep must be at least 1, got {sweep}")
        self.service = service
        self.sweep = sweep
        self._pending_after = ZERO_ID  # where the sweep of PENDING jobs goes on
        self._repairing = False  # this pass: a page of the sweep was mostly repairs
        self._came_round = False  # this pass: the sweep went on from the start once
        self.rounds = [0, 0]  # sweeps completed: of the PENDING jobs, of the Redis keys
        self._redis_key = 0  # which of dispatch.sweep_keys() the Redis sweep is in
        self._redis_cursor = 0
        self.passes = 0
        self.failed_passes = 0

    async def run_once(self) -> ReconcileReport:
        report = ReconcileReport()
        svc = self.service
        fresh_s = svc.settings.heartbeat_ttl_s / 2
        for row in await svc.pool.fetch(q("expired_leases"), EXPIRE_BATCH, fresh_s):
            reason = f"lease expired (worker {row['worker_id']})"
            if await svc.expire_lease(row["id"], row["lease_token"], reason):
                report.leases_expired += 1
                if row["heartbeating"]:  # alive and reachable, yet it let the lease lapse
                    await svc.record_evidence(
                        row["worker_id"], "no_progress", f"let the lease of job {row['id']} "
                        f"expire while heartbeating (younger than {fresh_s:g} s)", row["id"])
        fx = Effects()
        async with svc.transaction() as conn:
            fx.add_ready(ready := await conn.fetch(q("release_ready"), None))
        report.released_waiting = len(ready)
        await svc.apply_effects(fx)
        try:
            await self._sync_redis(report)
        except DispatchUnavailable:
            report.redis_reachable = False
        stale = await svc.pool.fetch(q("mark_stale_workers"), svc.settings.heartbeat_ttl_s)
        report.stale_workers = len(stale)
        report.dlq_purged = await svc.dlq_purge()
        self.passes += 1
        return report

    async def _sync_redis(self, report: ReconcileReport) -> None:
        """Bounded sweeps (invariant 8): each step reads one page of `sweep` jobs (or so) from
        one side and looks each up by key on the other, so a pass costs pages, not the
        backlog or the history. A sweep goes on within the pass while its pages are mostly
        repairs (Redis lost its data: the cost is the repair's) and otherwise resumes where it
        stopped at the next pass."""
        svc = self.service
        svc.dispatch.reset_breaker()
        await self._expired_in_redis(report)
        self._repairing = self._came_round = False
        while await self._pending_step(report):
            pass
        read, keys_done = 0, 0
        while keys_done < len(svc.dispatch.sweep_keys()):
            n, key_done, repairing = await self._redis_step(report)
            read, keys_done = read + n, keys_done + key_done
            if read >= self.sweep and not repairing:
                break
        await self._limits(report)

    async def _rows(self, ids: list[str]) -> dict[str, Any]:
        rows = await self.service.pool.fetch(q("jobs_by_id"), [uuid.UUID(j) for j in ids])
        return {r["id"]: r for r in rows}

    async def _reindex(self, report: ReconcileReport, rows: list[Any]) -> None:
        # Raise instead of deferring: this pass must know whether Redis took the repair.
        fx = Effects()
        fx.add_ready(rows)
        if fx.enqueue:
            await self.service.dispatch.enqueue(fx.enqueue)
            report.reindexed += len(fx.enqueue)

    async def _expired_in_redis(self, report: ReconcileReport) -> None:
        """Leases in the processing set past their deadline: a job gone or finished is
        forgotten; one PENDING again (popped, never leased) gets its place back and is
        queued again; one PostgreSQL still holds leased (its extension missed Redis) gets
        PostgreSQL's deadline, so the earliest entries are never the same ones pass after
        pass."""
        dispatch = self.service.dispatch
        stale = await dispatch.stale_leases(self.sweep)
        report.swept += len(stale)
        if not stale:
            return
        rows = await self._rows(stale)
        gone = [j for j in stale if j not in rows or rows[j]["status"] not in LIVE]
        back = [j for j in stale if j in rows and rows[j]["status"] == JobStatus.PENDING]
        held = [(j, max(1000, int(rows[j]["lease_ms"] or 0))) for j in stale
                if j in rows and rows[j]["status"] == JobStatus.PROCESSING]
        await dispatch.extend_many(held)
        if gone:
            await dispatch.forget(gone)
        if back:
            await dispatch.release_processing(back)
            where = await dispatch.presence(back)
            await self._reindex(report, [rows[j] for j in back if j not in where.indexed])
        report.orphans_removed += len(gone) + len(back)

    async def _pending_step(self, report: ReconcileReport) -> bool:
        """One page of PENDING jobs (id order, from where the last page ended): those Redis
        neither indexes nor holds under a live lease, still PENDING when read again, are
        indexed again. True: go on with the next page now (this one was mostly repairs, or
        the sweep came round at the end after repairs and goes on from the start, once)."""
        svc = self.service
        began = self._pending_after
        ids = [r["id"] for r in await svc.pool.fetch(q("pending_page"), began, self.sweep)]
        report.swept += len(ids)
        full = len(ids) == self.sweep
        self._pending_after = uuid.UUID(ids[-1]) if full else ZERO_ID
        self.rounds[0] += not full
        missing: list[str] = []
        if ids:
            where = await svc.dispatch.presence(ids)
            missing = [j for j in ids if j not in where.indexed
                       and where.processing.get(j, 0) <= where.now_ms]
        if missing:  # read again after Redis: a job leased or finished since is left alone
            rows = await self._rows(missing)
            await self._reindex(report, [rows[j] for j in missing if j in rows
                                         and rows[j]["status"] == JobStatus.PENDING])
        repairing = bool(ids) and 2 * len(missing) >= len(ids)
        self._repairing |= repairing
        if full:
            return repairing
        if began != ZERO_ID and self._repairing and not self._came_round:
            self._came_round = True
            return True
        return False

    async def _redis_step(self, report: ReconcileReport) -> tuple[int, bool, bool]:
        """One SCAN step of the sweep's key: entries whose job is gone, finished or leased
        (not PENDING) are forgotten; metadata of jobs neither live nor indexed is dropped.
        Redis is read before PostgreSQL, so an entry enqueued after its job's commit is never
        mistaken for an orphan. Returns (entries read, whether the key is done, whether the
        step was mostly repairs)."""
        svc = self.service
        keys = svc.dispatch.sweep_keys()
        key = keys[self._redis_key % len(keys)]
        cursor, ids = await svc.dispatch.scan_step(key, self._redis_cursor, self.sweep)
        self._redis_cursor = cursor
        if cursor == 0:
            self._redis_key = (self._redis_key + 1) % len(keys)
            self.rounds[1] += self._redis_key == 0
        report.swept += len(ids)
        if not ids:
            return 0, cursor == 0, False
        rows = await self._rows(ids)
        if key == keys[-1]:  # job metadata
            dead = [j for j in ids if j not in rows or rows[j]["status"] not in LIVE]
            where = await svc.dispatch.presence(dead)
            meta_orphans = [j for j in dead if j not in where.indexed]
            if meta_orphans:
                await svc.dispatch.forget_meta(meta_orphans)
            return len(ids), cursor == 0, 2 * len(meta_orphans) >= len(ids)
        orphans = [j for j in ids if j not in rows or rows[j]["status"] != JobStatus.PENDING]
        if orphans:
            await svc.dispatch.forget(orphans)
            report.orphans_removed += len(orphans)
        return len(ids), cursor == 0, 2 * len(orphans) >= len(ids)

    async def _limits(self, report: ReconcileReport) -> None:
        """Limits mirrored as stored; leases PostgreSQL holds (fallback, or lost with Redis'
        data) counted against them; running counts recounted."""
        svc = self.service
        leased = [(r["id"], int(r["lease_ms"] or 0), r["lease_via"] == "postgres",
                   flow_of(r["job_type"], r["tenant"], r["required_capability"]))
                  for r in await svc.pool.fetch(q("processing_jobs"))]
        # the limits are mirrored again only when the table changed since the version Redis
        # holds (or Redis lost it): a quiet pass does not read every limit
        version = int(await svc.pool.fetchval(q("limits_version")))
        mirror = None
        if await svc.dispatch.limits_version() != version:
            mirror = mirror_of(await list_limits(svc.pool))
            report.limits_mirrored = len(mirror)
        recorded, report.held_dropped = await svc.dispatch.sched_sync(
            mirror, leased, version=version)
        if recorded:
            # a lease that ended between reading PostgreSQL and the script (its forget came
            # first) must not stay recorded: give its place back now
            still = {r["id"] for r in await svc.pool.fetch(
                q("still_processing"), [uuid.UUID(j) for j in recorded])}
            await svc.dispatch.release_processing([j for j in recorded if j not in still])
            report.leases_recorded = len(still)

    async def run_full(self) -> ReconcileReport:
        """Passes until both sweeps have gone once round everything (`jobharness reconcile`:
        a repair by hand covers the whole index, a page at a time); their sums."""
        total = ReconcileReport()
        start = list(self.rounds)
        while True:
            report = await self.run_once()
            for key, value in report.as_dict().items():
                if isinstance(value, bool):
                    setattr(total, key, getattr(total, key) and value)
                else:
                    setattr(total, key, getattr(total, key) + value)
            if not report.redis_reachable or (
                    self.rounds[0] > start[0] and self.rounds[1] > start[1]):
                return total

    async def run(self, stop: asyncio.Event, interval_s: float = 2.0) -> None:
        """Run passes every `interval_s` until `stop` is set. Store outages are survived (the
        pool logs each once); any other failure of a pass is logged and the next pass runs,
        since a reconciler that stopped would break invariant 2 silently."""
        while not stop.is_set():
            try:
                await self.run_once()
            except (StoreUnavailable, DispatchUnavailable, OSError):
                self.failed_passes += 1
            except Exception:
                self.failed_passes += 1
                log.exception("reconciler pass failed; the next pass runs in %.1f s",
                              interval_s)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval_s)
