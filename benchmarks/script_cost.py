"""What the dispatch scripts cost Valkey per job (docs/performance.md), in a throw-away schema
on this machine's embedded servers:

    .venv/bin/python benchmarks/script_cost.py --jobs 20000 --batch 10,100 --tenants 1,1000

For each batch size and tenant count: N no-op jobs spread over the tenants are queued and
indexed, then popped by the acquire script `batch` at a time (as a worker filling that many
slots), then forgotten by the forget script in the same batches (as their completions are).
Valkey's own CPU time for each phase (`INFO commandstats`, script calls less the ones it
refused) is printed per job, with the script calls it was spread over."""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.jobs.model import JobSpec
from core.service.runtime import Runtime, endpoints, open_runtime
from core.settings import load_settings
from loadtests.scratch import scratch_schema


async def script_usec(rt: Runtime) -> tuple[int, int]:
    """Valkey's CPU microseconds in script calls so far, and the calls it ran."""
    stats: dict[str, Any] = (await rt.dispatch.client.info("commandstats")).get(
        "cmdstat_evalsha", {})
    return int(stats.get("usec", 0)), int(stats.get("calls", 0)) - int(
        stats.get("failed_calls", 0))


async def one(rt: Runtime, jobs: int, batch: int, tenants: int) -> str:
    await rt.dispatch.flush_prefix()
    await rt.pool.execute("TRUNCATE jobs, job_executions, job_dependencies CASCADE")
    for start in range(0, jobs, 1000):
        await rt.service.create_batch([
            JobSpec(job_type="noop", payload={"n": i}, tenant=f"t{i % tenants}")
            for i in range(start, min(jobs, start + 1000))])
    await rt.service.indexed()
    popped: list[list[str]] = []
    u0, c0 = await script_usec(rt)
    while res := (await rt.dispatch.acquire([], 600_000, count=batch)).job_ids:
        popped.append(res)
    u1, c1 = await script_usec(rt)
    for ids in popped:
        await rt.dispatch.forget(ids, counts={"executions:COMPLETED": len(ids)})
    u2, c2 = await script_usec(rt)
    n = sum(map(len, popped))
    if n != jobs:
        raise RuntimeError(f"{n} of {jobs} jobs popped: the benchmark is broken")
    return (f"batch {batch:>4}  tenants {tenants:>6}  acquire {(u1 - u0) / n:6.1f} us/job"
            f" ({c1 - c0} calls)  forget {(u2 - u1) / n:6.1f} us/job ({c2 - c1} calls)")


async def main(jobs: int, batches: list[int], tenants: list[int]) -> None:
    with endpoints(load_settings(), keep_running=True) as settings:
        settings = replace(settings, memory=False)
        async with scratch_schema(settings, "script_cost") as scratch, open_runtime(
                scratch, pool_size=2, redis_connections=2, migrate_first=False) as rt:
            for t in tenants:
                for b in batches:
                    print(await one(rt, jobs, b, t), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--batch", default="10,100", help="batch sizes, comma-separated")
    parser.add_argument("--tenants", default="1,1000", help="tenant counts, comma-separated")
    args = parser.parse_args()
    try:
        sizes = [int(b) for b in args.batch.split(",")]
        spreads = [int(t) for t in args.tenants.split(",")]
    except ValueError:
        parser.error("--batch and --tenants must be whole numbers joined by commas")
    if not 100 <= args.jobs <= 200_000 or not all(1 <= b <= 1000 for b in sizes) or not all(
            1 <= t <= args.jobs for t in spreads):
        parser.error("--jobs must be 100..200000, each --batch 1..1000, each --tenants 1..jobs")
    asyncio.run(main(args.jobs, sizes, spreads))
