"""The reconciler of invariant 2: it makes Redis agree with PostgreSQL again after any fault.

One pass: expire leases past their deadline (PostgreSQL clock; a holder that let one lapse
while heartbeating is recorded as making no progress), release WAITING jobs whose
dependencies are done, re-index PENDING jobs that Redis lost, drop Redis entries with no live
job behind them, mirror the scheduling limits and recount what runs under them (recording
leases PostgreSQL holds that Redis lacks), mark workers with stale PostgreSQL heartbeats, and
purge old DLQ entries. Redis is read before PostgreSQL, so an entry enqueued after its job's
commit is never mistaken for an orphan.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from dataclasses import asdict, dataclass
from typing import Any

from core.dispatch.index import DispatchSnapshot, flow_of
from core.errors import DispatchUnavailable, StoreUnavailable
from core.jobs.model import JobStatus
from core.service.base import Effects
from core.service.jobs import JobService
from core.service.limits import list_limits, mirror_of
from core.store.queries import q

EXPIRE_BATCH = 500
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
    redis_reachable: bool = True

    def as_dict(self) -> dict[str, int | bool]:
        return asdict(self)


class Reconciler:
    def __init__(self, service: JobService) -> None:
        self.service = service
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
        svc = self.service
        svc.dispatch.reset_breaker()
        snap: DispatchSnapshot = await svc.dispatch.snapshot()
        live: dict[str, Any] = {str(r["id"]): r for r in await svc.pool.fetch(q("live_jobs"))}
        fx = Effects()
        indexed = snap.queued | snap.delayed
        for job_id, row in live.items():
            if row["status"] != JobStatus.PENDING or job_id in indexed:
                continue
            deadline = snap.processing.get(job_id)
            if deadline is not None and deadline > snap.now_ms:
                continue  # being leased right now (popped, PostgreSQL update in flight)
            fx.add_ready([row])
        stale_processing = [
            j for j, deadline in snap.processing.items()
            if deadline <= snap.now_ms
            and (j not in live or live[j]["status"] != JobStatus.PROCESSING)
        ]
        orphans = [j for j in indexed if j not in live or live[j]["status"] != JobStatus.PENDING]
        fx.forget = sorted(set(orphans) | {j for j in stale_processing if j not in live})
        leftover_processing = [j for j in stale_processing if j in live]
        if leftover_processing:
            await svc.dispatch.release_processing(leftover_processing)
        meta_orphans = [j for j in snap.meta - live.keys() if j not in indexed]
        if meta_orphans:
            await svc.dispatch.forget_meta(meta_orphans)
        report.reindexed = len(fx.enqueue)
        report.orphans_removed = len(fx.forget) + len(leftover_processing)
        # Raise instead of deferring: this pass must know whether Redis took the repair.
        if fx.forget:
            await svc.dispatch.forget(fx.forget)
        if fx.enqueue:
            await svc.dispatch.enqueue(fx.enqueue)
        # limits mirrored as stored; leases PostgreSQL holds (fallback, or lost with Redis'
        # data) counted against them; running counts recounted
        leased = [(j, int(r["lease_ms"] or 0), r["lease_via"] == "postgres",
                   flow_of(r["job_type"], r["tenant"], r["required_capability"]))
                  for j, r in live.items() if r["status"] == JobStatus.PROCESSING]
        recorded, report.held_dropped = await svc.dispatch.sched_sync(
            mirror_of(await list_limits(svc.pool)), leased)
        if recorded:
            # a lease that ended between reading PostgreSQL and the script (its forget came
            # first) must not stay recorded: give its place back now
            still = {r["id"] for r in await svc.pool.fetch(
                q("still_processing"), [uuid.UUID(j) for j in recorded])}
            await svc.dispatch.release_processing([j for j in recorded if j not in still])
            report.leases_recorded = len(still)

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
