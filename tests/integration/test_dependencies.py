"""Dependency resolution: chains, diamonds, failure propagation, concurrent completions."""

from __future__ import annotations

import asyncio

import pytest

from core.jobs.model import JobSpec, JobStatus, Lease
from core.service.jobs import JobService


async def run_one(service: JobService, job_id: str) -> Lease:
    """Acquire until the given job is leased (it must be the only runnable one)."""
    lease = await service.acquire("w1")
    assert lease is not None, "expected a runnable job"
    assert lease.job_id == job_id, "expected that job to be the runnable one"
    return lease


async def status(service: JobService, job_id: str) -> JobStatus:
    return (await service.get(job_id)).status


async def test_chain_releases_in_order(service: JobService) -> None:
    a, b, c = await service.create_batch([
        JobSpec(job_type="noop", ref="a"),
        JobSpec(job_type="noop", ref="b", depends_on=("a",)),
        JobSpec(job_type="noop", ref="c", depends_on=("b",)),
    ])
    assert [a.status, b.status, c.status] == [JobStatus.PENDING, JobStatus.WAITING,
                                              JobStatus.WAITING]
    for job, nxt in ((a, b), (b, c)):
        lease = await run_one(service, job.job_id)
        assert await service.acquire("w1") is None
        await service.complete(lease.job_id, lease.token)
        assert await status(service, nxt.job_id) == JobStatus.PENDING
    lease = await run_one(service, c.job_id)
    await service.complete(lease.job_id, lease.token)
    assert (await service.counts())["COMPLETED"] == 3


async def test_diamond_waits_for_both_parents(service: JobService) -> None:
    top, left, right, bottom = await service.create_batch([
        JobSpec(job_type="noop", ref="top"),
        JobSpec(job_type="noop", ref="l", depends_on=("top",)),
        JobSpec(job_type="noop", ref="r", depends_on=("top",)),
        JobSpec(job_type="noop", depends_on=("l", "r")),
    ])
    lease = await run_one(service, top.job_id)
    await service.complete(lease.job_id, lease.token)
    leases = [await service.acquire("w1"), await service.acquire("w1")]
    assert {x.job_id for x in leases if x} == {left.job_id, right.job_id}
    await service.complete(leases[0].job_id, leases[0].token)  # type: ignore[union-attr]
    assert await status(service, bottom.job_id) == JobStatus.WAITING
    await service.complete(leases[1].job_id, leases[1].token)  # type: ignore[union-attr]
    assert await status(service, bottom.job_id) == JobStatus.PENDING


async def test_dependency_on_existing_job_by_id(service: JobService) -> None:
    parent = await service.create(JobSpec(job_type="noop"))
    child = await service.create(JobSpec(job_type="noop", depends_on=(parent.job_id,)))
    assert child.status == JobStatus.WAITING
    lease = await run_one(service, parent.job_id)
    await service.complete(lease.job_id, lease.token)
    done_child = await service.create(JobSpec(job_type="noop", depends_on=(parent.job_id,)))
    assert done_child.status == JobStatus.PENDING  # its dependency is already complete
    assert await status(service, child.job_id) == JobStatus.PENDING


async def test_death_cancels_all_dependents_transitively(service: JobService) -> None:
    root, mid, leaf, other = await service.create_batch([
        JobSpec(job_type="flaky", max_retries=0, ref="root", priority=5),
        JobSpec(job_type="noop", ref="mid", depends_on=("root",)),
        JobSpec(job_type="noop", depends_on=("mid",)),
        JobSpec(job_type="noop", priority=1),
    ])
    lease = await run_one(service, root.job_id)
    outcome = await service.fail(lease.job_id, lease.token, "root failed")
    assert outcome.status == JobStatus.DEAD
    assert outcome.cancelled_dependents == 2
    for job in (mid, leaf):
        j = await service.get(job.job_id)
        assert j.status == JobStatus.CANCELLED
        assert j.cancel_reason == f"dependency {root.job_id} is DEAD"
    assert await status(service, other.job_id) == JobStatus.PENDING  # unrelated: untouched


async def test_cancelling_a_parent_cancels_children(service: JobService) -> None:
    parent, child = await service.create_batch([
        JobSpec(job_type="noop", ref="p"), JobSpec(job_type="noop", depends_on=("p",))])
    await service.cancel(parent.job_id)
    child_job = await service.get(child.job_id)
    assert child_job.status == JobStatus.CANCELLED
    assert parent.job_id in (child_job.cancel_reason or "")


async def test_concurrent_parent_completions_release_every_diamond(service: JobService) -> None:
    n = 20
    specs: list[JobSpec] = []
    for i in range(n):
        specs += [JobSpec(job_type="noop", ref=f"l{i}"), JobSpec(job_type="noop", ref=f"r{i}"),
                  JobSpec(job_type="noop", depends_on=(f"l{i}", f"r{i}"))]
    created = await service.create_batch(specs)
    leases = []
    while (lease := await service.acquire("w1")) is not None:
        leases.append(lease)
    assert len(leases) == 2 * n
    await asyncio.gather(*(service.complete(x.job_id, x.token) for x in leases))
    bottoms = [created[3 * i + 2].job_id for i in range(n)]
    assert [await status(service, b) for b in bottoms] == [JobStatus.PENDING] * n


async def test_dependency_on_dead_job_is_refused(service: JobService) -> None:
    from core.errors import InvalidInput

    dead = await service.create(JobSpec(job_type="flaky", max_retries=0))
    lease = await run_one(service, dead.job_id)
    await service.fail(lease.job_id, lease.token, "x")
    with pytest.raises(InvalidInput, match="can never complete"):
        await service.create(JobSpec(job_type="noop", depends_on=(dead.job_id,)))
    assert await service.pool.fetchval("SELECT count(*) FROM jobs") == 1
