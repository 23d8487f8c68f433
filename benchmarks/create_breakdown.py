"""Where a single durable create's time goes (docs/performance.md), in a throw-away schema on
this machine's embedded servers:

    .venv/bin/python benchmarks/create_breakdown.py --creates 3000

N creates one after the other through the library, each split into the PostgreSQL insert
(with its commit, which is when the caller is answered) and the Redis indexing that follows it
in the background (write-behind, off the caller's path); beside them the bare round trips
(`SELECT 1`, `PING`). Medians, the first sixth left out as warm-up."""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import core.service.jobs as jobs_module
from core.jobs.model import JobSpec
from core.service.runtime import endpoints, open_runtime
from core.settings import load_settings
from loadtests.scratch import scratch_schema


def median_ms(values: list[float]) -> float:
    return round(statistics.median(values[len(values) // 6:]) * 1000, 3)


async def main(creates: int) -> None:
    insert_s: list[float] = []
    index_s: list[float] = []
    total_s: list[float] = []
    insert_plan = jobs_module.insert_plan

    async def timed_insert(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        out = await insert_plan(*args, **kwargs)
        insert_s.append(time.perf_counter() - t0)
        return out

    jobs_module.insert_plan = timed_insert  # type: ignore[assignment]
    with endpoints(load_settings(), keep_running=True) as settings:
        settings = replace(settings, memory=False)
        async with scratch_schema(settings, "create_breakdown") as scratch, open_runtime(
                scratch, pool_size=2, redis_connections=2, migrate_first=False) as rt:
            svc = rt.service
            enqueue = rt.dispatch.writer.send

            async def timed_enqueue(items: Any) -> Any:
                t0 = time.perf_counter()
                out = await enqueue(items)
                index_s.append(time.perf_counter() - t0)
                return out

            rt.dispatch.writer.send = timed_enqueue
            for _ in range(creates):
                t0 = time.perf_counter()
                await svc.create(JobSpec(job_type="noop", payload={"blob": "x" * 180}))
                total_s.append(time.perf_counter() - t0)
            pg_rtt, redis_rtt = [], []
            async with rt.pool.acquire() as conn:
                for _ in range(creates):
                    t0 = time.perf_counter()
                    await conn.execute("SELECT 1")
                    pg_rtt.append(time.perf_counter() - t0)
            for _ in range(creates):
                t0 = time.perf_counter()
                await rt.dispatch.client.ping()
                redis_rtt.append(time.perf_counter() - t0)
    print(f"create {median_ms(total_s)} ms = insert and commit {median_ms(insert_s)} ms"
          f" (+ the rest); Redis indexing after it, in the background,"
          f" {median_ms(index_s)} ms;"
          f" round trips: PostgreSQL {median_ms(pg_rtt)} ms, Redis {median_ms(redis_rtt)} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--creates", type=int, default=3000)
    args = parser.parse_args()
    if not 100 <= args.creates <= 100_000:
        parser.error("--creates must be 100..100000")
    asyncio.run(main(args.creates))
