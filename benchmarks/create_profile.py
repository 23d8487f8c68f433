"""Where a create loop's CPU goes (docs/performance.md): cProfile over N single creates through
the library, one after the other as the peers' enqueue loop sends them, in a throw-away schema
on this machine's embedded servers:

    .venv/bin/python benchmarks/create_profile.py --creates 3000

Prints the mean time per create (inflated by the profiler) and the functions with the most
cumulative time; the event loop's own wait (`select`/`poll`) is time spent waiting for the
stores, the rest is the client's work."""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.jobs.model import JobSpec
from core.service.runtime import endpoints, open_runtime
from core.settings import load_settings
from loadtests.scratch import scratch_schema

PAYLOAD = {"blob": "x" * 180}


async def main(creates: int, top: int) -> None:
    with endpoints(load_settings(), keep_running=True) as settings:
        settings = replace(settings, memory=False)
        async with scratch_schema(settings, "create_profile") as scratch, open_runtime(
                scratch, pool_size=4, redis_connections=4, migrate_first=False) as rt:
            for _ in range(max(1, creates // 6)):  # warm the pool and the statements
                await rt.service.create(JobSpec(job_type="noop", payload=PAYLOAD))
            prof = cProfile.Profile()
            t0 = time.perf_counter()
            prof.enable()
            for _ in range(creates):
                await rt.service.create(JobSpec(job_type="noop", payload=PAYLOAD))
            prof.disable()
            took = time.perf_counter() - t0
    print(f"{creates} creates, {took / creates * 1000:.3f} ms each under the profiler")
    pstats.Stats(prof).sort_stats("cumulative").print_stats(top)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--creates", type=int, default=3000)
    ap.add_argument("--top", type=int, default=40, help="functions listed")
    args = ap.parse_args()
    if args.creates < 1:
        raise SystemExit("--creates must be at least 1")
    asyncio.run(main(args.creates, args.top))
