"""Invariants 1, 2 and 4: Redis is only an index; losing it loses no job."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from core.infra.embedded import free_port
from core.jobs.model import JobSpec, JobStatus
from core.service.jobs import JobService
from core.service.reconciler import Reconciler
from core.service.runtime import create_dispatch
from core.settings import Settings
from core.worker.handlers import BUILTIN_HANDLERS
from core.worker.loop import Worker
from tests.conftest import wait_until


@pytest.fixture
async def redis_down(service: JobService, settings: Settings) -> AsyncIterator[JobService]:
    """The same database, with Redis pointing at a port where nothing listens."""
    dead = replace(settings, redis_url=f"redis://127.0.0.1:{free_port()}/0",
                   redis_timeout_s=0.2)
    dispatch = create_dispatch(dead)
    svc = JobService(service.pool, dispatch, dead)
    try:
        yield svc
    finally:
        await dispatch.close()


async def test_flushed_redis_is_rebuilt_by_the_reconciler(service: JobService) -> None:
    created = await service.create_batch(
        [JobSpec(job_type="noop", priority=1 + i % 5) for i in range(30)]
        + [JobSpec(job_type="noop", delay_s=60)]
    )
    leased = await service.acquire("w1")
    assert leased is not None
    await service.dispatch.flush_prefix()
    assert await service.acquire("w1") is None  # the index is gone
    report = await Reconciler(service).run_once()
    assert report.reindexed == 30  # 29 runnable + 1 delayed; the leased one is not re-queued
    depths = await service.dispatch.depths()
    assert depths["delayed"] == 1
    assert depths["high"] + depths["medium"] + depths["low"] == 29
    seen = set()
    while (lease := await service.acquire("w1")) is not None:
        seen.add(lease.job_id)
    assert seen == {c.job_id for c in created[:30]} - {leased.job_id}
    again = await Reconciler(service).run_once()
    assert again.reindexed == 0
    assert again.orphans_removed == 0


async def test_orphan_entries_are_removed(service: JobService) -> None:
    from core.dispatch.records import EnqueueItem

    ghost = "00000000-0000-4000-8000-000000000001"
    await service.dispatch.enqueue([EnqueueItem(job_id=ghost, priority=3, capability=None,
                                                delay_ms=0)])
    report = await Reconciler(service).run_once()
    assert report.orphans_removed == 1
    assert sum((await service.dispatch.depths()).values()) == 0


async def test_creates_commit_and_jobs_run_when_redis_is_unreachable(
    redis_down: JobService, service: JobService
) -> None:
    created = await redis_down.create_batch([JobSpec(job_type="noop") for _ in range(10)])
    assert all(c.status == JobStatus.PENDING for c in created)
    writer = redis_down.dispatch.writer  # the write-behind indexing tries Redis twice
    assert writer.task is not None
    await writer.task
    assert redis_down.stats["dispatch_deferred"] >= 1
    assert (await redis_down.counts())["PENDING"] == 10
    worker = Worker(redis_down, "pg-only", BUILTIN_HANDLERS, concurrency=2)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))

    async def all_done() -> bool:
        return (await redis_down.counts())["COMPLETED"] == 10

    await wait_until(all_done, what="jobs processed through PostgreSQL")
    stop.set()
    await task
    assert redis_down.stats["acquired_postgres"] == 10
    vias = await service.pool.fetch("SELECT DISTINCT acquired_via FROM job_executions")
    assert [r["acquired_via"] for r in vias] == ["postgres"]
    # The healthy Redis never saw them, and the reconciler finds nothing to do.
    report = await Reconciler(service).run_once()
    assert report.reindexed == 0


async def test_jobs_created_during_outage_are_indexed_after_it(
    redis_down: JobService, service: JobService
) -> None:
    await redis_down.create_batch([JobSpec(job_type="noop") for _ in range(5)])
    assert await service.acquire("w1") is None  # the healthy path does not know them yet
    report = await Reconciler(service).run_once()
    assert report.reindexed == 5
    assert await service.acquire("w1") is not None


async def test_reconciler_survives_redis_outage(redis_down: JobService) -> None:
    report = await Reconciler(redis_down).run_once()
    assert report.redis_reachable is False


async def test_popped_but_never_leased_job_is_recovered(service: JobService) -> None:
    """A worker that pops from Redis and dies before its PostgreSQL update."""
    created = await service.create(JobSpec(job_type="noop"))
    res = await service.dispatch.acquire([], lease_ms=50)
    assert res.job_id == created.job_id  # now only in the processing set

    async def deadline_passed() -> bool:
        snap = await service.dispatch.snapshot()
        return snap.processing.get(created.job_id, 0) <= snap.now_ms

    await wait_until(deadline_passed, what="processing deadline")
    report = await Reconciler(service).run_once()
    assert report.reindexed == 1
    lease = await service.acquire("w1")
    assert lease is not None
    assert lease.job_id == created.job_id


async def test_a_pass_reads_pages_not_the_backlog_and_a_lost_index_is_rebuilt_at_once(
    service: JobService,
) -> None:
    """Invariant 8 for the reconciler: with 1,200 jobs queued and pages of 40, a quiet pass
    reads about three pages; single lost entries and orphans are found as the sweeps come
    round; a Redis that lost everything is rebuilt within one pass (its pages are all
    repairs)."""
    from core.dispatch.records import EnqueueItem

    created = await service.create_batch([JobSpec(job_type="noop", priority=3)
                                          for _ in range(1200)])
    await service.indexed()
    rec = Reconciler(service, sweep=40)
    lost = [c.job_id for c in created[::400]]
    await service.dispatch.forget(lost)
    ghost = "00000000-0000-4000-8000-00000000beef"
    await service.dispatch.enqueue([EnqueueItem(job_id=ghost, priority=3, capability=None,
                                                delay_ms=0)])
    reports = [await rec.run_once() for _ in range(1200 // 40 + 2)]
    assert max(r.swept for r in reports) <= 4 * 40  # the page sizes, not the 1,200
    assert reports[0].reindexed < len(lost)  # a quiet pass does not read everything
    assert sum(r.reindexed for r in reports) == len(lost)
    assert sum(r.orphans_removed for r in reports) == 1
    where = await service.dispatch.presence([*lost, ghost])
    assert where.indexed == set(lost)

    await service.dispatch.flush_prefix()
    report = await rec.run_once()
    assert report.reindexed == 1200
    assert sum((await service.dispatch.depths()).values()) == 1200


async def test_a_lease_whose_redis_deadline_lapsed_takes_postgres_deadline(
    service: JobService,
) -> None:
    """An extension that reached PostgreSQL but not Redis: the pass gives the processing entry
    PostgreSQL's deadline instead of leaving it at the head of the stale ones for ever."""
    await service.create(JobSpec(job_type="noop"))
    lease = await service.acquire("w1")
    assert lease is not None
    await service.dispatch.client.zadd(service.dispatch.keys.processing, {lease.job_id: 1})
    report = await Reconciler(service).run_once()
    assert report.orphans_removed == 0
    assert report.reindexed == 0
    where = await service.dispatch.presence([lease.job_id])
    assert where.processing[lease.job_id] > where.now_ms  # alive again, PostgreSQL's lease
    assert await service.dispatch.stale_leases(10) == []
    await service.complete(lease.job_id, lease.token)


async def test_a_repair_by_hand_goes_once_round_everything(service: JobService) -> None:
    """`jobharness reconcile` (run_full): passes until both sweeps came round, so every lost
    entry and orphan is found in one command, a page at a time."""
    from core.dispatch.records import EnqueueItem

    created = await service.create_batch([JobSpec(job_type="noop") for _ in range(300)])
    await service.indexed()
    lost = [c.job_id for c in created[::50]]
    await service.dispatch.forget(lost)
    await service.dispatch.enqueue([EnqueueItem(
        job_id="00000000-0000-4000-8000-00000000f00d", priority=3, capability=None,
        delay_ms=0)])
    report = await Reconciler(service, sweep=20).run_full()
    assert report.reindexed == len(lost)
    assert report.orphans_removed == 1
    assert report.swept >= 300  # every PENDING job was read once
