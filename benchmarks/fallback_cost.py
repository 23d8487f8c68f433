"""What one PostgreSQL-fallback lease under limits costs with 1 and with 100,000 tenant limits
configured (invariant 8: it counts the work, not the limits), in a throw-away schema on this
machine's embedded servers:

    .venv/bin/python benchmarks/fallback_cost.py --limits 1,100000 --leases 200

For each count, that many tenant limits exist (max_running, and a rate limit on one in ten),
50 jobs run (leased and held) and 1,000 are queued over 100 tenants; then leases are taken
one after the other through the fallback (`_acquire_postgres`, as while Redis is down), each
completed at once so the running count stays put: the median and p99 lease time."""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.jobs.model import JobSpec
from core.service.runtime import Runtime, endpoints, open_runtime
from core.settings import load_settings
from loadtests.scratch import scratch_schema


async def measure(rt: Runtime, limits: int, leases: int) -> tuple[float, float]:
    await rt.pool.execute("TRUNCATE jobs, job_executions, job_dependencies, job_limits CASCADE")
    await rt.pool.execute(
        "INSERT INTO job_limits (scope, name, max_running, rate_per_s) "
        "SELECT 'tenant', 't' || g, 5, CASE WHEN g % 10 = 0 THEN 1000 END "
        "FROM generate_series(0, $1 - 1) g", limits)
    await rt.service.create_batch([JobSpec(job_type="noop", tenant=f"t{i % 100}")
                                   for i in range(1050)])
    await rt.pool.execute("ANALYZE")
    svc = rt.service
    for i in range(50):  # held: the work running now
        await svc._acquire_postgres(f"holder{i}", [], 600.0)
    times = []
    for i in range(leases):
        t0 = time.perf_counter()
        lease = await svc._acquire_postgres(f"w{i}", [], 600.0)
        times.append((time.perf_counter() - t0) * 1000)
        if lease is None:
            raise RuntimeError("the fallback found nothing to lease: the benchmark is broken")
        await svc.complete(lease.job_id, lease.token)
    times.sort()
    return statistics.median(times), times[int(0.99 * (len(times) - 1))]


async def main(counts: list[int], leases: int) -> None:
    with endpoints(load_settings(), keep_running=True) as settings:
        settings = replace(settings, memory=False)
        async with scratch_schema(settings, "fallback_cost") as scratch, open_runtime(
                scratch, pool_size=2, redis_connections=2, migrate_first=False) as rt:
            base = None
            for n in counts:
                p50, p99 = await measure(rt, n, leases)
                base = base or p50
                print(f"{n:>7} tenant limits: fallback lease p50 {p50:7.2f} ms  p99 {p99:7.2f}"
                      f" ms  (x{p50 / base:.2f})", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limits", default="1,100000", help="tenant limits, comma-separated")
    parser.add_argument("--leases", type=int, default=200)
    a = parser.parse_args()
    asyncio.run(main([int(x) for x in a.limits.split(",")], a.leases))
