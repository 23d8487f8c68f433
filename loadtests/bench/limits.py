"""`jobharness bench limits`: what the stores themselves can do with the statements the core
sends per job, measured on the same servers so the core's figures can be read as ratios.

PostgreSQL: pgbench (shipped with the embedded server) runs three scripts, each the core's
statement for one step of a job's life, prepared, `--ops` transactions in all at
`--concurrency` clients: the insert of a create, the lease update with its execution row (the
job picked by `FOR UPDATE SKIP LOCKED`, where the core gets its id from Redis), and the
completion function; then the batch create's ceiling, 1,000-row INSERTs built in the server.
Redis: the acquire script's round trips at the same concurrency, on
queues filled beforehand. Runs in a throw-away schema and key prefix.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import tempfile
import time
from typing import Any

from core.dispatch.records import EnqueueItem
from core.infra.embedded import pg_bin
from core.service.runtime import open_runtime
from core.settings import Settings, split_password

SCRIPTS = {
    "insert": """
INSERT INTO jobs (id, job_type, payload, priority, status, max_retries, timeout_s, run_at)
VALUES (gen_random_uuid(), 'noop', '{"i": 1}'::jsonb, 3, 'PENDING', 5, 30, clock_timestamp());
""",
    "lease": """
WITH candidate AS (
    SELECT id FROM jobs WHERE status = 'PENDING' LIMIT 1 FOR UPDATE SKIP LOCKED
), leased AS (
    UPDATE jobs j
    SET status = 'PROCESSING', worker_id = 'bench', lease_token = nextval('lease_token_seq'),
        lease_expires_at = clock_timestamp() + interval '300 s',
        started_at = coalesce(j.started_at, clock_timestamp())
    FROM candidate c WHERE j.id = c.id
    RETURNING j.id, j.lease_token, j.retry_count
)
INSERT INTO job_executions (job_id, worker_id, attempt, lease_token, acquired_via)
SELECT id, 'bench', retry_count + 1, lease_token, 'redis' FROM leased;
""",
    "complete": """
BEGIN;
SELECT id AS jid, lease_token AS tok FROM jobs WHERE status = 'PROCESSING'
LIMIT 1 FOR UPDATE SKIP LOCKED \\gset
SELECT * FROM complete_job(:jid::uuid, :tok::bigint, '{"ok": true}'::jsonb);
COMMIT;
""",
}
BATCH_ROWS = 1000
SCRIPTS["insert_batch"] = f"""
INSERT INTO jobs (id, job_type, payload, priority, status, max_retries, timeout_s, run_at)
SELECT gen_random_uuid(), 'noop', jsonb_build_object('i', g), 1 + g % 5, 'PENDING', 5, 30,
       clock_timestamp()
FROM generate_series(1, {BATCH_ROWS}) AS g;
"""
TPS = re.compile(r"tps = ([0-9.]+) \(without initial connection time\)")
LATENCY = re.compile(r"latency average = ([0-9.]+) ms")


class LimitsError(RuntimeError):
    """pgbench is missing or failed."""


def _pgbench() -> str:
    found = pg_bin("pgbench")
    if found.exists():
        return str(found)
    on_path = shutil.which("pgbench")
    if on_path is None:
        raise LimitsError("pgbench not found (neither the embedded server's nor on PATH)")
    return on_path


def pgbench_command(settings: Settings, script: str, *, clients: int, ops: int
                    ) -> tuple[list[str], dict[str, str]]:
    """pgbench's command line and environment: the password goes through the environment,
    as a command line is visible to every user of the machine (ps)."""
    dsn, password = split_password(settings.pg_dsn or "")
    env = {**os.environ, "PGOPTIONS": f"-c search_path={settings.schema}",
           **({"PGPASSWORD": password} if password else {})}
    cmd = [_pgbench(), "-n", "-M", "prepared", "-c", str(clients), "-j", str(min(clients, 2)),
           "-t", str(max(1, ops // clients)), "-f", script, dsn]
    return cmd, env


async def _run_pgbench(settings: Settings, step: str, ops: int, concurrency: int) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as fh:
        fh.write(SCRIPTS[step])
        script = fh.name
    clients = max(1, min(concurrency, ops))
    cmd, env = pgbench_command(settings, script, clients=clients, ops=ops)
    try:
        proc = await asyncio.create_subprocess_exec(
            *cmd, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await proc.communicate()
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(script)
    text = out.decode() + err.decode()
    tps = TPS.search(text)
    if proc.returncode != 0 or tps is None:
        raise LimitsError(f"pgbench {step} failed: {text.strip()[-400:]}")
    latency = LATENCY.search(text)
    return {"tps": round(float(tps.group(1)), 1), "transactions": clients * max(1, ops // clients),
            "clients": clients,
            "latency_avg_ms": float(latency.group(1)) if latency else None}


async def _redis_acquire(settings: Settings, ops: int, concurrency: int) -> dict[str, Any]:
    async with open_runtime(settings, migrate_first=False, memory=False,
                            redis_connections=concurrency + 1) as rt:
        d = rt.dispatch
        items = [EnqueueItem(job_id=f"limit-{i}", priority=1 + i % 5, capability=None,
                             delay_ms=0) for i in range(ops)]
        await d.enqueue(items)
        counter = iter(range(ops))

        async def runner() -> int:
            got = 0
            for _ in counter:
                got += (await d.acquire((), 300_000)).job_id is not None
            return got

        t0 = time.perf_counter()
        got = sum(await asyncio.gather(*(runner() for _ in range(concurrency))))
        elapsed = time.perf_counter() - t0
        await d.flush_prefix()
    if got != ops:
        raise LimitsError(f"redis acquire: {got} of {ops} queued entries popped")
    return {"ops_s": round(ops / elapsed, 1), "calls": ops, "clients": concurrency}


async def measure_limits(settings: Settings, *, ops: int, concurrency: int) -> dict[str, Any]:
    """The three PostgreSQL steps in order (each feeds the next) and the Redis acquire rate,
    on `settings`' schema and prefix (a scratch one: rows are left there)."""
    out: dict[str, Any] = {}
    for step in ("insert", "lease", "complete"):
        out[step] = await _run_pgbench(settings, step, ops, concurrency)
    # the batch create's ceiling: rows added by one 1,000-row statement built in the server
    # (no client work at all), at least 10 statements per client
    batch = await _run_pgbench(settings, "insert_batch",
                               max(ops // BATCH_ROWS, 10 * concurrency), concurrency)
    out["insert_batch"] = {**batch, "rows_per_transaction": BATCH_ROWS,
                           "rows_s": round(batch["tps"] * BATCH_ROWS, 1)}
    out["redis_acquire"] = await _redis_acquire(settings, ops, concurrency)
    async with open_runtime(settings, migrate_first=False, memory=False) as rt:
        out["completed_rows"] = int(await rt.pool.fetchval(
            "SELECT count(*) FROM jobs WHERE status = 'COMPLETED'"))
    return out


async def bench_limits(settings: Settings, *, ops: int, concurrency: int) -> dict[str, Any]:
    import os

    from loadtests.scratch import scratch_schema

    async with scratch_schema(settings, f"bench_{os.getpid()}") as scratch:
        limits = await measure_limits(scratch, ops=ops, concurrency=concurrency)
    return {"benchmark": "limits", "ops": ops, "concurrency": concurrency, **limits}
