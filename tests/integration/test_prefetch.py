"""Workers holding jobs leased ahead of their free slots (`prefetch`), on the real stores:
every job runs and completes once, in fewer and larger lease calls; jobs held ahead when the
worker stops go back to wait without a retry spent, and are leased again."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from core.jobs.model import JobSpec
from core.service.jobs import JobService
from core.worker.handlers import build_registry
from core.worker.loop import Worker
from tests.conftest import wait_until
from tests.integration.test_processes import proc_settings, supervising, svc  # noqa: F401


async def test_every_job_completes_once_with_jobs_held_ahead(service: JobService) -> None:
    await service.create_batch([JobSpec(job_type="noop") for _ in range(90)])
    await service.indexed()
    workers = [Worker(service, f"w{i}", build_registry(), concurrency=3, prefetch=6,
                      idle_wait_s=30.0) for i in range(2)]
    stop = asyncio.Event()
    runs = [asyncio.create_task(w.run(stop)) for w in workers]
    try:
        async def drained() -> bool:
            return ((await service.counts()).get("COMPLETED", 0) == 90
                    and (await service.dispatch.depths())["processing"] == 0)

        await wait_until(drained, timeout_s=60, what="90 jobs completed and out of Redis")
    finally:
        stop.set()
        await asyncio.gather(*runs)
    executions = await service.pool.fetchrow(
        "SELECT count(*) AS n, count(DISTINCT job_id) AS jobs, "
        "count(*) FILTER (WHERE status = 'COMPLETED') AS completed FROM job_executions")
    assert dict(executions) == {"n": 90, "jobs": 90, "completed": 90}
    assert sum(w.stats["complete"] for w in workers) == 90
    assert sum(w.stats["ran_ahead"] for w in workers) > 0


async def test_jobs_held_ahead_go_back_without_a_retry_when_the_worker_stops(
    service: JobService,
) -> None:
    await service.create_batch([JobSpec(job_type="hang") for _ in range(4)])
    await service.indexed()
    started = asyncio.Event()
    gate = asyncio.Event()

    async def block(payload: dict[str, Any]) -> None:
        started.set()
        await gate.wait()

    worker = Worker(service, "w-ahead", {"hang": block}, concurrency=1, prefetch=3,
                    idle_wait_s=30.0)
    stop = asyncio.Event()
    run = asyncio.create_task(worker.run(stop))
    await asyncio.wait_for(started.wait(), 10)
    # one job runs, three are leased to this worker and wait for its slot
    assert (await service.counts()).get("PROCESSING", 0) == 4
    stop.set()

    async def given_back() -> bool:
        return (await service.counts()).get("PENDING", 0) == 3

    await wait_until(given_back, timeout_s=10, what="the three held ahead back to wait")
    assert not run.done()  # the running job still holds the worker: it is drained
    gate.set()
    await run
    rows = await service.pool.fetch(
        "SELECT j.status, j.retry_count, array_agg(e.status) AS executions FROM jobs j "
        "JOIN job_executions e ON e.job_id = j.id GROUP BY j.id")
    assert sorted((r["status"], r["retry_count"], list(r["executions"])) for r in rows) == [
        ("COMPLETED", 0, ["COMPLETED"]),
        *[("PENDING", 0, ["RELEASED"])] * 3,
    ]
    assert worker.stats["release"] == 3
    # back in the dispatch index: leased again by the next worker that asks
    pending = await service.pool.fetch("SELECT id FROM jobs WHERE status = 'PENDING'")
    again = await service.acquire_many("w-next", 4)
    assert sorted(lease.job_id for lease in again) == sorted(str(r["id"]) for r in pending)


@pytest.mark.parametrize("spawn", ["forkserver", "exec"])
async def test_a_supervisors_workers_hold_jobs_ahead(
        svc: JobService, spawn: str) -> None:  # noqa: F811
    async with supervising(svc, workers=1, concurrency=1, prefetch=2, spawn=spawn) as sup:
        (slot,) = sup.slots.values()
        created = await svc.create_batch(
            [JobSpec(job_type="sleep", payload={"ms": 800}) for _ in range(3)])

        async def all_leased_to_it() -> bool:  # one running, two held ahead
            return await svc.pool.fetchval(
                "SELECT count(*) FROM jobs WHERE status = 'PROCESSING' AND worker_id = $1",
                slot.worker_id) == 3

        await wait_until(all_leased_to_it, timeout_s=10, what="three jobs leased to one slot")

        async def done() -> bool:
            return (await svc.counts()).get("COMPLETED", 0) == len(created)

        await wait_until(done, timeout_s=30, what="the three jobs completed")
