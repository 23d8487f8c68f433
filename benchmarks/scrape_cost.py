"""What one /metrics scrape's store reads cost with 1 and with 100,000 finished jobs in the
history (invariant 8: a scrape reads what the work made, not the history), in a throw-away
schema on this machine's embedded servers:

    .venv/bin/python benchmarks/scrape_cost.py --history 1,100000 --scrapes 9

For each size, that many COMPLETED jobs (each with its execution, finished an hour ago and
more) and as many workers stopped a day ago are written straight into the tables, plus 20
jobs finished in the last minutes; then the API's scrape (`core.api.metrics.refresh`) runs
`--scrapes` times: the median wall time."""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.api.metrics import Metrics, refresh
from core.service.runtime import Runtime, endpoints, open_runtime
from core.settings import load_settings
from loadtests.scratch import scratch_schema

HISTORY = """
WITH j AS (
    INSERT INTO jobs (id, job_type, status, started_at, completed_at, created_at, run_at)
    SELECT gen_random_uuid(), 'noop', 'COMPLETED', now() - make_interval(secs => $2 + g),
           now() - make_interval(secs => $2 + g), now() - make_interval(secs => $2 + g + 1),
           now() - make_interval(secs => $2 + g + 1)
    FROM generate_series(1, $1) g RETURNING id, started_at
)
INSERT INTO job_executions (job_id, worker_id, attempt, lease_token, status, started_at,
                            finished_at, duration_ms)
SELECT id, 'w', 1, nextval('lease_token_seq'), 'COMPLETED', started_at, started_at, 1 FROM j
"""
WORKERS = """
INSERT INTO workers (id, hostname, pid, status, registered_at, stopped_at)
SELECT 'old-' || g, 'h', 0, 'FAILED', now() - interval '2 days', now() - interval '1 day'
FROM generate_series(1, $1) g
"""


async def measure(rt: Runtime, history: int, scrapes: int) -> float:
    await rt.pool.execute("TRUNCATE jobs, job_executions, job_dependencies, workers CASCADE")
    await rt.pool.execute(HISTORY, history, 3600.0)
    await rt.pool.execute(HISTORY, 20, 30.0)
    await rt.pool.execute(WORKERS, history)
    await rt.pool.execute("ANALYZE")
    metrics = Metrics()
    await refresh(metrics, rt)  # warm
    times = []
    for _ in range(scrapes):
        t0 = time.perf_counter()
        await refresh(metrics, rt)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


async def main(sizes: list[int], scrapes: int) -> None:
    with endpoints(load_settings(), keep_running=True) as settings:
        settings = replace(settings, memory=False)
        async with scratch_schema(settings, "scrape_cost") as scratch, open_runtime(
                scratch, pool_size=2, redis_connections=2, migrate_first=False) as rt:
            base = None
            for n in sizes:
                ms = await measure(rt, n, scrapes)
                base = base or ms
                print(f"history {n:>7}: scrape reads {ms:8.1f} ms  (x{ms / base:.2f})",
                      flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--history", default="1,100000", help="finished jobs, comma-separated")
    parser.add_argument("--scrapes", type=int, default=9)
    a = parser.parse_args()
    asyncio.run(main([int(x) for x in a.history.split(",")], a.scrapes))
