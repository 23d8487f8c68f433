"""Where a drain's CPU goes (docs/performance.md), in a throw-away schema on this machine's
embedded servers:

    .venv/bin/python benchmarks/drain_cpu.py --jobs 20000 --processes 1 --slots 100

Queues N no-op jobs (~200-byte payload), then P worker processes x S slots drain them
(loadtests.bench.dispatch.drain). Meanwhile the CPU time of each process group (PostgreSQL's
processes, Valkey, the worker processes) is read at the start and the end of the drain
(loadtests/bench/cpu.py); printed per drained job, with PostgreSQL commits and Redis script
calls per job.

`--schema-change SQL` runs SQL in the throw-away schema before the jobs are queued, to weigh
what a schema object costs the drain (e.g. `--schema-change "DROP INDEX idx_jobs_created_at"`);
it touches nothing else."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from dataclasses import replace
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.jobs.model import JobSpec
from core.service.runtime import endpoints, open_runtime
from core.settings import load_settings
from loadtests.bench.cpu import CpuMeter, descendants
from loadtests.bench.dispatch import drain
from loadtests.scratch import scratch_schema

COMMITS = "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"


async def main(jobs: int, processes: int, slots: int, prefetch: int,
               schema_change: str | None) -> None:
    with endpoints(load_settings(), keep_running=True) as settings:
        settings = replace(settings, heartbeat_interval_s=2.0, heartbeat_ttl_s=10.0,
                           memory=False)
        async with scratch_schema(settings, f"drain_cpu_{os.getpid()}") as scratch, \
                open_runtime(scratch, pool_size=4, redis_connections=4,
                             migrate_first=False) as rt:
            if schema_change:
                try:
                    await rt.pool.execute(schema_change)
                except asyncpg.PostgresError as exc:
                    raise SystemExit(f"--schema-change failed, nothing measured: {exc}") from exc
            for start in range(0, jobs, 1000):
                await rt.service.create_batch([JobSpec(job_type="noop",
                                                       payload={"blob": "x" * 180})
                                               for _ in range(min(1000, jobs - start))])
            cpu = CpuMeter(descendants)
            commits0 = await rt.pool.fetchval(COMMITS)
            calls0 = (await rt.dispatch.client.info("commandstats")).get(
                "cmdstat_evalsha", {}).get("calls", 0)
            rate = await drain(rt, jobs, processes=processes, concurrency=slots,
                               prefetch=prefetch, cpu=cpu)
            commits1 = await rt.pool.fetchval(COMMITS)
            calls1 = (await rt.dispatch.client.info("commandstats")).get(
                "cmdstat_evalsha", {}).get("calls", 0)
    print(json.dumps({
        "layout": f"{processes}x{slots}" + (f"+{prefetch}" if prefetch else ""), "jobs": jobs,
        "drain_jobs_s": round(rate),
        "cpu_us_per_job": {"workers" if part == "clients" else part: round(us)
                           for part, us in cpu.per_job_us().items()},
        "commits_per_job": round((commits1 - commits0) / jobs, 3),
        "redis_scripts_per_job": round((calls1 - calls0) / jobs, 3),
        **({"schema_change": schema_change} if schema_change else {})}))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--slots", type=int, default=100)
    parser.add_argument("--prefetch", type=int, default=0,
                        help="jobs each worker holds leased ahead of its free slots (0)")
    parser.add_argument("--schema-change", metavar="SQL",
                        help="SQL run in the throw-away schema before the jobs are queued")
    args = parser.parse_args()
    if not (1000 <= args.jobs <= 200_000 and 1 <= args.processes <= 100
            and 1 <= args.slots <= 1000 and 0 <= args.prefetch <= 1000):
        parser.error("--jobs must be 1000..200000, --processes 1..100, --slots 1..1000, "
                     "--prefetch 0..1000")
    asyncio.run(main(args.jobs, args.processes, args.slots, args.prefetch, args.schema_change))
