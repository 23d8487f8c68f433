"""New jobs are indexed in Redis write-behind: a create is answered once its row has
committed, and within the creating process nothing overtakes the indexing (an acquisition, a
cancel, any other Redis effect waits for it)."""

from __future__ import annotations

import asyncio

from core.jobs.model import JobSpec, JobStatus
from core.service.jobs import JobService


async def test_concurrent_creates_are_all_stored_and_all_indexed(
    service: JobService,
) -> None:
    created = await asyncio.gather(*(service.create(JobSpec(job_type="noop"))
                                     for _ in range(50)))
    assert (await service.counts())["PENDING"] == 50
    await service.indexed()
    where = await service.dispatch.presence([c.job_id for c in created])
    assert where.indexed == {c.job_id for c in created}


async def test_a_cancel_right_after_the_create_leaves_nothing_in_redis(
    service: JobService,
) -> None:
    # while 10,000 jobs are being indexed, the next create waits its turn to be sent to Redis;
    # were the cancel's Redis effect not held back behind it, its forget would reach Redis
    # first and the index would bring the cancelled job back
    warm = await service.create(JobSpec(job_type="noop"))  # statements prepared once
    await service.cancel(warm.job_id)
    first = await service.create_batch([JobSpec(job_type="noop") for _ in range(10_000)])
    job = await service.create(JobSpec(job_type="noop"))
    assert await service.cancel(job.job_id) == JobStatus.CANCELLED
    await service.indexed()
    where = await service.dispatch.presence([job.job_id, first[0].job_id])
    assert where.indexed == {first[0].job_id}
    assert where.processing == {}


async def test_the_creating_process_leases_its_own_new_job_at_once(
    service: JobService,
) -> None:
    job = await service.create(JobSpec(job_type="noop", priority=5))
    lease = await service.acquire("w-own")
    assert lease is not None
    assert lease.job_id == job.job_id
    assert lease.via == "redis"
