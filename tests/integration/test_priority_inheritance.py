"""Priority inheritance: what a higher-priority job waits on runs at that priority, in
PostgreSQL and in the Redis queues; it falls back when the waiting job is cancelled."""

from __future__ import annotations

from core.jobs.model import JobSpec
from core.service.jobs import JobService


async def prio(service: JobService, job_id: str) -> tuple[int, int | None]:
    row = await service.pool.fetchrow(
        "SELECT priority, base_priority FROM jobs WHERE id = $1::uuid", job_id)
    assert row is not None
    return row["priority"], row["base_priority"]


async def band(service: JobService, job_id: str) -> str | None:
    """The Redis priority queue holding the job, if any."""
    for name, key in zip(("high", "medium", "low"), service.dispatch.keys.priority_queues,
                         strict=True):
        if await service.dispatch.client.zscore(key, job_id) is not None:
            return name
    return None


async def test_a_chain_inherits_and_falls_back_when_the_dependent_is_cancelled(
        service: JobService) -> None:
    a, b = await service.create_batch([
        JobSpec(job_type="noop", priority=1, ref="a"),
        JobSpec(job_type="noop", priority=1, ref="b", depends_on=("a",))])
    other = await service.create(JobSpec(job_type="noop", priority=4))
    assert await band(service, a.job_id) == "low"
    c = await service.create(JobSpec(job_type="noop", priority=5, depends_on=(b.job_id,)))
    # a and b now run at c's priority; their own is kept
    assert await prio(service, b.job_id) == (5, 1)
    assert await prio(service, a.job_id) == (5, 1)
    job = await service.get(a.job_id)
    assert (job.priority, job.base_priority) == (5, 1)  # the read model shows both
    assert await band(service, a.job_id) == "high"
    lease = await service.acquire("w1")
    assert lease is not None
    assert lease.job_id == a.job_id  # ahead of the priority-4 job: no inversion
    await service.release(lease.job_id, lease.token, "test")
    await service.cancel(c.job_id)
    assert await prio(service, a.job_id) == (1, None)
    assert await prio(service, b.job_id) == (1, None)
    assert await band(service, a.job_id) == "low"
    lease = await service.acquire("w1")
    assert lease is not None
    assert lease.job_id == other.job_id


async def test_a_diamond_inherits_through_both_branches_and_keeps_it_once_released(
        service: JobService) -> None:
    a, b, c, d = await service.create_batch([
        JobSpec(job_type="noop", priority=1, ref="a"),
        JobSpec(job_type="noop", priority=2, ref="b", depends_on=("a",)),
        JobSpec(job_type="noop", priority=1, ref="c", depends_on=("a",)),
        JobSpec(job_type="noop", priority=5, ref="d", depends_on=("b", "c"))])
    assert [await prio(service, j.job_id) for j in (a, b, c, d)] == [
        (5, 1), (5, 2), (5, 1), (5, None)]
    assert await band(service, a.job_id) == "high"  # raised in the batch that queued it
    lease = await service.acquire("w1")
    assert lease is not None
    assert lease.job_id == a.job_id
    await service.complete(lease.job_id, lease.token)
    # b and c are released at the priority d lends them
    assert {await band(service, b.job_id), await band(service, c.job_id)} == {"high"}
    await service.cancel(d.job_id)
    assert await prio(service, b.job_id) == (2, None)
    assert await prio(service, c.job_id) == (1, None)
    assert (await band(service, b.job_id), await band(service, c.job_id)) == ("medium", "low")


async def test_a_later_dependent_only_raises_and_cancelling_keeps_the_highest_left(
        service: JobService) -> None:
    a = await service.create(JobSpec(job_type="noop", priority=1))
    high = await service.create(JobSpec(job_type="noop", priority=5, depends_on=(a.job_id,)))
    mid = await service.create(JobSpec(job_type="noop", priority=3, depends_on=(a.job_id,)))
    assert await prio(service, a.job_id) == (5, 1)  # the lower newcomer does not lower it
    await service.cancel(high.job_id)
    assert await prio(service, a.job_id) == (3, 1)  # the highest still waiting
    assert await band(service, a.job_id) == "medium"
    await service.cancel(mid.job_id)
    assert await prio(service, a.job_id) == (1, None)
    # a job that nothing waits on keeps its own priority: nothing to undo
    assert await prio(service, high.job_id) == (5, None)


async def test_a_dead_dependency_cancels_its_dependents_and_their_loan_ends(
        service: JobService) -> None:
    a = await service.create(JobSpec(job_type="noop", priority=1))
    doomed = await service.create(JobSpec(job_type="noop", priority=1, max_retries=0))
    await service.create(JobSpec(job_type="noop", priority=5,
                                 depends_on=(a.job_id, doomed.job_id)))
    assert await prio(service, a.job_id) == (5, 1)
    assert await prio(service, doomed.job_id) == (5, 1)
    victim = await service.acquire("w1")
    assert victim is not None
    if victim.job_id == a.job_id:  # both run at 5 now, a queued first: put it back
        await service.release(victim.job_id, victim.token, "test")
        victim = await service.acquire("w1")
    assert victim is not None
    assert victim.job_id == doomed.job_id
    await service.fail(victim.job_id, victim.token, "boom")  # no retries left: DEAD
    assert await prio(service, a.job_id) == (1, None)
    await service.dlq_requeue(doomed.job_id)  # nothing waits on it any more: its own again
    assert await prio(service, doomed.job_id) == (1, None)
    assert await band(service, doomed.job_id) == "low"
