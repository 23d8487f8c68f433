"""Invariant 7: bad input gets a typed error naming the field, and writes nothing."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from core.errors import (
    DependencyCycle,
    InvalidInput,
    JobNotFound,
    PayloadTooLarge,
    UnknownDependency,
    UnknownJobType,
)
from core.jobs.model import JobSpec
from core.service.jobs import JobService

BAD_BATCHES: list[tuple[list[Any], type[Exception], str]] = [
    ([JobSpec(job_type="noop", priority=9)], InvalidInput, "priority"),
    ([JobSpec(job_type="noop"), JobSpec(job_type="nope")], UnknownJobType, "jobs[1].job_type"),
    ([JobSpec(job_type="noop", ref="a", depends_on=("b",)),
      JobSpec(job_type="noop", ref="b", depends_on=("a",))], DependencyCycle, "depends_on"),
    ([JobSpec(job_type="noop", depends_on=(str(uuid.uuid4()),))], UnknownDependency,
     "depends_on"),
    ([JobSpec(job_type="noop", depends_on=("not-a-ref",))], InvalidInput, "depends_on"),
    ([JobSpec(job_type="noop", payload={"x": "y" * 300_000})], PayloadTooLarge, "payload"),
    ([JobSpec(job_type="noop", payload={"x": object()})], InvalidInput, "payload"),
    ([JobSpec(job_type="noop", ref="a"), JobSpec(job_type="noop", ref="a")], InvalidInput,
     "ref"),
    ([], InvalidInput, "jobs"),
]


@pytest.mark.parametrize(("batch", "error", "field"), BAD_BATCHES)
async def test_bad_batch_writes_nothing(
    service: JobService, batch: list[Any], error: type[Exception], field: str
) -> None:
    good = JobSpec(job_type="noop")
    with pytest.raises(error) as info:
        await service.create_batch([good, *batch] if batch else batch)
    assert field.split(".")[-1] in str(info.value)
    assert await service.pool.fetchval("SELECT count(*) FROM jobs") == 0
    assert await service.pool.fetchval("SELECT count(*) FROM job_dependencies") == 0
    assert sum((await service.dispatch.depths()).values()) == 0


async def test_malformed_and_unknown_ids(service: JobService) -> None:
    with pytest.raises(InvalidInput, match="job_id"):
        await service.get("not-a-uuid")
    with pytest.raises(JobNotFound):
        await service.get(str(uuid.uuid4()))
    with pytest.raises(JobNotFound):
        await service.complete(str(uuid.uuid4()), 1)
    with pytest.raises(JobNotFound):
        await service.cancel(str(uuid.uuid4()))


async def test_database_constraints_back_the_validation(service: JobService) -> None:
    """Even a client that bypasses the service cannot store bad states."""
    import asyncpg

    bad_rows = [
        "INSERT INTO jobs (id, job_type, priority) VALUES (gen_random_uuid(), 'noop', 0)",
        "INSERT INTO jobs (id, job_type, status) VALUES (gen_random_uuid(), 'noop', 'LOST')",
        "INSERT INTO jobs (id, job_type, status) VALUES (gen_random_uuid(), 'noop', 'PROCESSING')",
    ]
    for sql in bad_rows:
        with pytest.raises(asyncpg.CheckViolationError):
            await service.pool.execute(sql)
    job = await service.create(JobSpec(job_type="noop"))
    with pytest.raises(asyncpg.CheckViolationError):
        await service.pool.execute(
            "INSERT INTO job_dependencies VALUES ($1, $1)", uuid.UUID(job.job_id))
