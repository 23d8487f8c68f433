"""The invariant checker must be able to fail: each kind of violation is planted directly in
the tables or keys and must be reported (and a clean system must pass)."""

from __future__ import annotations

import uuid

import asyncpg

from chaos.checker import check_all
from core.jobs.model import JobSpec
from core.service.jobs import JobService


async def run_checks(svc: JobService) -> dict[str, int]:
    async with svc.pool.acquire() as conn:
        checks = await check_all(conn, svc.dispatch.client, svc.settings.prefix)
    return {c.name: c.violations for c in checks}


async def finished_job(svc: JobService) -> str:
    job = await svc.create(JobSpec(job_type="noop"))
    lease = await svc.acquire("w1")
    assert lease is not None
    await svc.complete(lease.job_id, lease.token)
    return job.job_id


async def test_clean_system_passes(service: JobService) -> None:
    await finished_job(service)
    assert set((await run_checks(service)).values()) == {0}


async def test_lost_job_is_reported(service: JobService) -> None:
    await service.create(JobSpec(job_type="noop"))  # never processed
    assert (await run_checks(service))["lost_jobs"] == 1


async def test_double_completion_is_reported(service: JobService) -> None:
    job_id = await finished_job(service)
    await service.pool.execute(
        "INSERT INTO job_executions (job_id, worker_id, attempt, lease_token, status,"
        " finished_at) VALUES ($1, 'ghost', 2, 999999, 'COMPLETED', clock_timestamp())",
        uuid.UUID(job_id))
    assert (await run_checks(service))["completed_twice"] == 1


async def test_completed_without_execution_is_reported(service: JobService) -> None:
    job_id = await finished_job(service)
    await service.pool.execute("DELETE FROM job_executions WHERE job_id = $1", uuid.UUID(job_id))
    assert (await run_checks(service))["completed_without_execution"] == 1


async def test_stuck_lease_is_reported(service: JobService) -> None:
    await service.create(JobSpec(job_type="noop"))
    lease = await service.acquire("w1")
    assert lease is not None
    await service.pool.execute("UPDATE jobs SET lease_expires_at = clock_timestamp()"
                               " - interval '5 minutes'")
    found = await run_checks(service)
    assert found["stuck_leases"] == 1
    assert found["lost_jobs"] == 1


async def test_execution_without_job_is_reported(service: JobService) -> None:
    # Our schema forbids it with a foreign key; other implementations of the contract may not.
    await service.pool.execute("ALTER TABLE job_executions"
                               " DROP CONSTRAINT job_executions_job_id_fkey")
    await service.pool.execute(
        "INSERT INTO job_executions (job_id, worker_id, attempt, lease_token) VALUES"
        " (gen_random_uuid(), 'ghost', 1, 424242)")
    assert (await run_checks(service))["executions_without_job"] == 1


async def test_dlq_entry_without_dead_job_is_reported(service: JobService) -> None:
    job_id = await finished_job(service)
    await service.pool.execute(
        "INSERT INTO dead_letter_queue (job_id, job_type, error, retry_count, job_snapshot)"
        " VALUES ($1, 'noop', 'planted', 0, '{}'::jsonb)", uuid.UUID(job_id))
    assert (await run_checks(service))["dlq_without_dead_job"] == 1


async def test_orphan_redis_entry_is_reported(service: JobService) -> None:
    job_id = await finished_job(service)
    await service.dispatch.client.zadd(service.dispatch.keys.low, {job_id: 1})
    await service.dispatch.client.zadd(service.dispatch.keys.delayed,
                                       {str(uuid.uuid4()): 1})
    assert (await run_checks(service))["orphan_redis_entries"] == 2


async def test_limit_overrun_is_reported(service: JobService) -> None:
    from core.service import limits

    await limits.set_limit(service.pool, service.dispatch,
                           limits.Limit(scope="tenant", name="acme", max_running=1),
                           service.settings.job_types)
    await service.create_batch([JobSpec(job_type="noop", tenant="acme") for _ in range(2)])
    lease = await service.acquire("w1")
    assert lease is not None
    assert (await run_checks(service))["limit_overruns"] == 0  # one lease open: within
    # a second lease opened beside the first, behind the scheduler's back
    await service.pool.execute(
        "WITH j AS (UPDATE jobs SET status = 'PROCESSING', worker_id = 'ghost',"
        " lease_token = 777777, lease_expires_at = clock_timestamp() + interval '1 minute'"
        " WHERE status = 'PENDING' RETURNING id)"
        " INSERT INTO job_executions (job_id, worker_id, attempt, lease_token)"
        " SELECT id, 'ghost', 1, 777777 FROM j")
    async with service.pool.acquire() as conn:
        checks = {c.name: c for c in await check_all(conn, None, service.settings.prefix)}
    assert checks["limit_overruns"].violations == 1
    assert checks["limit_overruns"].examples == ["tenant acme: 2 leases at once, limit 1"]
    await service.complete(lease.job_id, lease.token)


async def test_checker_reads_only_the_contract(service: JobService) -> None:
    """It runs on a plain connection with nothing of ours loaded but the schema."""
    assert service.settings.pg_dsn
    conn = await asyncpg.connect(service.settings.pg_dsn,
                                 server_settings={"search_path": service.settings.schema})
    try:
        from chaos.checker import check_postgres

        assert all(c.ok for c in await check_postgres(conn))
    finally:
        await conn.close()
