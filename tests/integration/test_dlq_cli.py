"""`jobharness dlq list|requeue|purge` on the real stores: what the dead-letter queue holds,
requeued with fresh retries, purged by age only when asked (and everything with --all)."""

from __future__ import annotations

import asyncio
import json

import pytest

from core.cli.main import main
from core.jobs.model import JobSpec, JobStatus
from core.service.jobs import JobService


def dlq(service: JobService, *args: str) -> list[str]:
    s = service.settings
    assert s.pg_dsn
    assert s.redis_url
    return ["dlq", *args, "--pg-dsn", s.pg_dsn, "--redis-url", s.redis_url, "--prefix",
            s.prefix, "--json"]


async def cli(args: list[str]) -> int:
    """The command as a user runs it: its own event loop (in a thread, beside this one)."""
    return await asyncio.to_thread(main, args)


async def dead_job(service: JobService) -> str:
    created = await service.create(JobSpec(job_type="flaky", max_retries=0))
    lease = await service.acquire("w1")
    assert lease is not None
    assert lease.job_id == created.job_id
    await service.fail(lease.job_id, lease.token, "boom")
    return created.job_id


async def test_dlq_cli_lists_requeues_and_purges(
        service: JobService, capsys: pytest.CaptureFixture[str]) -> None:
    job_id = await dead_job(service)
    assert await cli(dlq(service, "list")) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [e["job_id"] for e in listed] == [job_id]
    assert listed[0]["error"] == "boom"

    assert await cli(dlq(service, "requeue", job_id)) == 0
    assert json.loads(capsys.readouterr().out) == {"requeued": [job_id]}
    assert (await service.get(job_id)).status == JobStatus.PENDING
    assert await cli(dlq(service, "list")) == 0
    assert json.loads(capsys.readouterr().out) == []

    lease = await service.acquire("w1")  # it dies again
    assert lease is not None
    await service.fail(lease.job_id, lease.token, "boom again")
    with pytest.raises(SystemExit):  # purge says how much: an age, or --all
        await cli(dlq(service, "purge"))
    assert "--older-than-days" in capsys.readouterr().err
    assert await cli(dlq(service, "purge", "--older-than-days", "30")) == 0  # too young
    assert json.loads(capsys.readouterr().out) == {"purged": 0}
    assert await cli(dlq(service, "purge", "--all")) == 1  # for good: only with --yes
    assert "give --yes" in capsys.readouterr().err
    assert len(await service.dlq_list()) == 1  # nothing deleted
    assert await cli(dlq(service, "purge", "--all", "--yes")) == 0
    # both entries go: the live one and the first death's, kept as history when requeued
    assert json.loads(capsys.readouterr().out) == {"purged": 2}
    assert await cli(dlq(service, "list")) == 0
    assert json.loads(capsys.readouterr().out) == []
    # a job that is not in the DLQ cannot be requeued: one clear line, exit 1
    assert await cli(dlq(service, "requeue", job_id)) == 1
    assert "DLQ" in capsys.readouterr().err
