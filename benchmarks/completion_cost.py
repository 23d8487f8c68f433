"""What a completion costs PostgreSQL, the batched statement against the one-job-at-a-time
function it replaced (docs/performance.md), in a throw-away schema on this machine's embedded
servers:

    .venv/bin/python benchmarks/completion_cost.py --jobs 10000 --batch 2,10,50

For each batch size and each form, N jobs are queued and leased (in batches of that size, as
a worker filling its slots would), then completed in batches of that size: `complete_jobs`
(migration 012, a few set-based statements per batch) and `complete_job` once per row (the
function of migrations 007/010, still installed). Statistics are taken before the leases, as
a young schema has them. Prints microseconds per job for the lease and the completion, wall
time (with the commit's WAL flush) and the CPU time of the PostgreSQL process that ran them
(what the statements cost the server, whatever the client does); the forms alternate, so a
drift of the machine spreads over both."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from dataclasses import replace
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.jobs.model import JobSpec
from core.service.runtime import Runtime, endpoints, open_runtime
from core.settings import load_settings
from core.store.queries import q
from loadtests.scratch import scratch_schema

PER_ROW = """SELECT u.ord, c.*
FROM unnest($1::uuid[], $2::bigint[], $3::jsonb[]) WITH ORDINALITY AS u(id, token, result, ord)
CROSS JOIN LATERAL complete_job(u.id, u.token, u.result) c ORDER BY u.ord"""
FORMS = {"complete_jobs": q("complete_jobs"), "complete_job per row": PER_ROW}


def _cpu(backend: psutil.Process) -> float:
    t = backend.cpu_times()
    return t.user + t.system


async def one(rt: Runtime, jobs: int, batch: int, sql: str) -> tuple[float, ...]:
    """(lease, completion) microseconds per job for `jobs` jobs in batches of `batch`, wall
    time then the PostgreSQL process's CPU time."""
    await rt.pool.execute("TRUNCATE jobs, job_executions, job_dependencies CASCADE")
    for start in range(0, jobs, 1000):
        await rt.service.create_batch([JobSpec(job_type="noop", payload={"blob": "x" * 180})
                                       for _ in range(min(1000, jobs - start))])
    await rt.pool.execute("ANALYZE")
    ids: list[uuid.UUID] = [r["id"] for r in await rt.pool.fetch("SELECT id FROM jobs")]
    async with rt.pool.acquire() as conn:  # one server process runs both, its CPU sampled
        backend = psutil.Process(await conn.fetchval("SELECT pg_backend_pid()"))
        c0, t0 = _cpu(backend), time.perf_counter()
        leased = []
        for i in range(0, jobs, batch):
            part = ids[i:i + batch]
            leased += await conn.fetch(q("lease_jobs"), part, ["bench"] * len(part), 600.0,
                                       "redis")
        c1, t1 = _cpu(backend), time.perf_counter()
        for i in range(0, len(leased), batch):
            part = leased[i:i + batch]
            rows = await conn.fetch(sql, [r["id"] for r in part],
                                    [r["lease_token"] for r in part], [None] * len(part))
            if not all(r["ok"] for r in rows):
                raise RuntimeError("a completion was refused: the benchmark is broken")
        c2, t2 = _cpu(backend), time.perf_counter()
    return tuple(x / jobs * 1e6 for x in (t1 - t0, t2 - t1, c1 - c0, c2 - c1))


async def main(jobs: int, batches: list[int]) -> None:
    with endpoints(load_settings(), keep_running=True) as settings:
        settings = replace(settings, memory=False)
        async with scratch_schema(settings, "completion_cost") as scratch, open_runtime(
                scratch, pool_size=2, redis_connections=2, migrate_first=False) as rt:
            await rt.pool.execute("INSERT INTO workers (id, hostname, pid, status)"
                                  " VALUES ('bench', 'bench', 0, 'ACTIVE')")
            for batch in batches:
                for name, sql in FORMS.items():
                    lease, complete, lease_cpu, complete_cpu = await one(rt, jobs, batch, sql)
                    print(f"batch {batch:>4}  {name:<22} lease {lease:5.0f} us/job"
                          f" (server CPU {lease_cpu:4.0f})  completion {complete:5.0f} us/job"
                          f" (server CPU {complete_cpu:4.0f})", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--batch", default="2,10,50", help="batch sizes, comma-separated")
    args = parser.parse_args()
    try:
        sizes = [int(b) for b in args.batch.split(",")]
    except ValueError:
        parser.error("--batch must be whole numbers joined by commas")
    if not 100 <= args.jobs <= 100_000 or not all(1 <= b <= 1000 for b in sizes):
        parser.error("--jobs must be 100..100000 and each --batch 1..1000")
    asyncio.run(main(args.jobs, sizes))
