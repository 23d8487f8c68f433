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


async def test_fencing_violations_are_reported(service: JobService) -> None:
    job_id = await finished_job(service)
    token = await service.pool.fetchval("SELECT lease_token FROM job_executions"
                                        " WHERE job_id = $1", uuid.UUID(job_id))
    clean = await run_checks(service)
    assert (clean["fencing_out_of_order"], clean["lease_after_completion"]) == (0, 0)
    # a later lease with a smaller token, and (being after the completion) a lease too many
    await service.pool.execute(
        "INSERT INTO job_executions (job_id, worker_id, attempt, lease_token, status,"
        " started_at, finished_at) VALUES ($1, 'ghost', 2, $2, 'LEASE_EXPIRED',"
        " clock_timestamp(), clock_timestamp())",
        uuid.UUID(job_id), token - 1)
    found = await run_checks(service)
    assert found["fencing_out_of_order"] == 1
    assert found["lease_after_completion"] == 0  # its token is smaller: not a later lease
    await service.pool.execute(
        "INSERT INTO job_executions (job_id, worker_id, attempt, lease_token, status,"
        " started_at, finished_at) VALUES ($1, 'ghost', 3, $2, 'LEASE_EXPIRED',"
        " clock_timestamp(), clock_timestamp())",
        uuid.UUID(job_id), token + 100)
    assert (await run_checks(service))["lease_after_completion"] == 1


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

        checks = await check_postgres(conn)
        # every check ran (an empty list would pass `all`), limit_overruns included: this
        # schema has job_limits
        assert [c.name for c in checks] == [
            "lost_jobs", "completed_twice", "completed_without_execution", "stuck_leases",
            "executions_without_job", "dlq_without_dead_job", "fencing_out_of_order",
            "lease_after_completion", "limit_overruns"]
        assert all(c.ok for c in checks)
    finally:
        await conn.close()


async def test_lost_job_before_a_cutoff_only(service: JobService) -> None:
    """A drill alone judges lost jobs among those created before its faults ended."""
    from datetime import UTC, datetime, timedelta

    await service.create(JobSpec(job_type="noop"))  # never processed
    async with service.pool.acquire() as conn:
        before = {c.name: c.violations for c in await check_all(
            conn, None, service.settings.prefix,
            created_before=datetime.now(UTC) - timedelta(hours=1))}
        after = {c.name: c.violations for c in await check_all(
            conn, None, service.settings.prefix, created_before=datetime.now(UTC))}
    assert (before["lost_jobs"], after["lost_jobs"]) == (0, 1)


async def test_replacement_storm_is_reported(service: JobService) -> None:
    """A worker replaced for a stale heartbeat while a store it heartbeats to was away is
    counted against a drill that expected none; one replaced for another reason, or outside
    the window, is not."""
    import time

    from chaos.actions import Endpoints
    from chaos.drill import Drill, DrillRunner

    for wid, reason in (("storm-1", "heartbeat timed out (redis key expired, ...)"),
                        ("killed-1", "process killed by signal 9")):
        await service.register_worker(wid, [])
        await service.deregister_worker(wid, status="FAILED", reason=reason)
    drill = Drill(name="planted", expect_no_replacement_during=["redis"], settle_s=0)
    runner = DrillRunner(drill, Endpoints(), {})
    runner.wall_t0 = time.time() - 5  # the drill began 5 s ago
    inside = [{"name": "partition", "args": {"target": "redis"}, "start_s": 0, "end_s": 10}]
    outside = [{"name": "partition", "args": {"target": "redis"}, "start_s": -60,
                "end_s": -50}]
    other = [{"name": "partition", "args": {"target": "postgres"}, "start_s": 0, "end_s": 10}]
    assert await runner.replacement_storm(service.pool, inside, 1.0) == 1
    assert await runner.replacement_storm(service.pool, outside, 1.0) == 0
    assert await runner.replacement_storm(service.pool, other, 1.0) == 0
    # a worker quarantined that the drill never turned Byzantine is counted too
    await service.register_worker("honest-1", [])
    await service.quarantine_worker("honest-1", "planted")
    # the pass rule: every check holds, the invariants given included
    planted = {"name": "lost_jobs", "violations": 1, "examples": [], "ok": False}
    report = await runner.conclude(service.pool, service.dispatch, [planted],
                                   heartbeat_ttl_s=1.0)
    assert [c["name"] for c in report.checks] == [
        "lost_jobs", "drill_not_aborted", "steady_state_before", "steady_state_after",
        "no_replacement_storm", "honest_not_quarantined"]
    honest = next(c for c in report.checks if c["name"] == "honest_not_quarantined")
    assert honest["examples"] == ["honest-1 was quarantined and never turned"]
    assert not report.passed
    report.checks = []
    assert not report.passed  # no check at all is not a pass
