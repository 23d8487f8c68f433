"""A worker's carried completions leave the Redis index with its next acquisition (one Redis
call per worker cycle): removed first, so the limit places they free serve that same call;
sent on their own when no acquisition comes soon, when the worker goes idle, or stops."""

from __future__ import annotations

import asyncio

import pytest

from core.jobs.model import JobSpec
from core.service import leasing
from core.service.jobs import JobService
from core.worker.handlers import build_registry
from core.worker.loop import Worker
from tests.conftest import wait_until
from tests.integration.test_scheduling import running_counts, set_limit


async def processing(service: JobService) -> int:
    return (await service.dispatch.depths())["processing"]


async def completed_counter(service: JobService) -> int:
    return (await service.dispatch.event_counts()).get("executions:COMPLETED", 0)


async def test_carried_completions_leave_redis_with_the_next_acquisition(
    service: JobService, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(leasing, "FORGET_LATER_S", 3600.0)  # only an acquisition sends them
    await service.create_batch([JobSpec(job_type="noop") for _ in range(6)])
    await service.indexed()
    first = await service.acquire_many("w1", 3)
    got = await service.report_and_acquire(
        "w1", 3, (), [(lease.job_id, lease.token, None) for lease in first])
    assert got.outcomes == [None] * 3
    assert len(got.leases) == 3
    # completed in PostgreSQL, still in the processing set: their forget waits for a ride
    assert (await service.counts())["COMPLETED"] == 3
    assert await processing(service) == 6
    assert await completed_counter(service) == 0
    # the next acquisition (nothing left to lease) carries them; its own completions, with
    # no lease to ride on, go on their own
    last = await service.report_and_acquire(
        "w1", 3, (), [(lease.job_id, lease.token, None) for lease in got.leases])
    assert last.outcomes == [None] * 3
    assert last.leases == []
    assert await processing(service) == 0
    assert await completed_counter(service) == 6
    assert (await service.counts())["COMPLETED"] == 6


async def test_waiting_forgets_go_on_their_own_when_no_acquisition_comes(
    service: JobService,
) -> None:
    await service.create_batch([JobSpec(job_type="noop") for _ in range(4)])
    await service.indexed()
    first = await service.acquire_many("w1", 2)
    got = await service.report_and_acquire(
        "w1", 2, (), [(lease.job_id, lease.token, None) for lease in first])
    assert len(got.leases) == 2

    async def sent() -> bool:  # FORGET_LATER_S after the completions, without any call
        return await processing(service) == 2 and await completed_counter(service) == 2

    await wait_until(sent, timeout_s=10, what="the waiting forgets sent on their own")


async def test_the_places_carried_completions_free_serve_the_same_acquisition(
    service: JobService, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(leasing, "FORGET_LATER_S", 3600.0)
    await set_limit(service, "tenant", "acme", max_running=1)
    await service.create(JobSpec(job_type="noop", tenant="acme"))
    await service.indexed()
    (a,) = await service.acquire_many("w1", 1)
    await service.create(JobSpec(job_type="noop"))
    await service.indexed()
    # A's completion rides with the lease of the unlimited job; Redis still counts A
    got = await service.report_and_acquire("w1", 1, (), [(a.job_id, a.token, None)])
    (f,) = got.leases
    assert got.outcomes == [None]
    assert (await running_counts(service))["tenant\0acme"] == 1
    b = await service.create(JobSpec(job_type="noop", tenant="acme"))
    await service.indexed()
    # the next acquisition removes A first: its place serves this call, which leases B
    got = await service.report_and_acquire("w1", 2, (), [(f.job_id, f.token, None)])
    assert [lease.job_id for lease in got.leases] == [b.job_id]
    assert (await running_counts(service))["tenant\0acme"] == 1  # B


async def test_a_worker_going_idle_sends_its_waiting_forgets(
    service: JobService, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(leasing, "FORGET_LATER_S", 3600.0)  # no timer: only the idle path
    await service.create_batch([JobSpec(job_type="noop") for _ in range(40)])
    await service.indexed()
    worker = Worker(service, "w-idle", build_registry(), concurrency=4, idle_wait_s=30.0)
    stop = asyncio.Event()
    run = asyncio.create_task(worker.run(stop))
    try:
        async def drained() -> bool:
            return ((await service.counts()).get("COMPLETED", 0) == 40
                    and await processing(service) == 0)

        await wait_until(drained, timeout_s=30, what="the jobs done and out of Redis")
        assert worker.stats["complete"] == 40
        assert not run.done()  # still running, idle: the idle path sent them
        assert await completed_counter(service) == 40
    finally:
        stop.set()
        await run
