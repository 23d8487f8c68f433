"""A create loop's client CPU and wall time per create at each write-behind linger (how long
the Redis indexing of a stream of creates waits to carry more of them), alternated in one run
on this machine's embedded servers, in a throw-away schema:

    .venv/bin/python benchmarks/create_linger.py --lingers 2,10 --creates 3000 --rounds 2

CPU is `time.process_time` of this process (the client alone: the stores' CPU is not in it);
wall time is what the loop waited per create, each create awaited as the peers' enqueue loop
does (benchmarks/peers/compare.py)."""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import uvloop

from core.jobs.model import JobSpec
from core.service.runtime import endpoints, open_runtime
from core.settings import load_settings
from loadtests.scratch import scratch_schema

PAYLOAD = {"blob": "x" * 180}


async def main(lingers_ms: list[float], creates: int, rounds: int) -> None:
    with endpoints(load_settings(), keep_running=True) as settings:
        settings = replace(settings, memory=False)
        async with scratch_schema(settings, "create_linger") as scratch, open_runtime(
                scratch, pool_size=4, redis_connections=4, migrate_first=False) as rt:
            for _ in range(max(1, creates // 6)):  # warm the pool and the statements
                await rt.service.create(JobSpec(job_type="noop", payload=PAYLOAD))
            writer = rt.service.dispatch.writer
            for r in range(rounds):
                for ms in lingers_ms:
                    await rt.service.indexed()
                    writer.linger_s = ms / 1000
                    cpu0, wall0 = time.process_time(), time.perf_counter()
                    for _ in range(creates):
                        await rt.service.create(JobSpec(job_type="noop", payload=PAYLOAD))
                    cpu = (time.process_time() - cpu0) / creates * 1e6
                    wall = (time.perf_counter() - wall0) / creates * 1e6
                    print(f"round {r + 1}, linger {ms:g} ms: client CPU {cpu:.0f} us and wall "
                          f"{wall:.0f} us per create ({1e6 / wall:,.0f} creates/s)")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lingers", default="2,10", help="milliseconds, comma-separated")
    ap.add_argument("--creates", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    try:
        lingers = [float(x) for x in args.lingers.split(",")]
    except ValueError:
        raise SystemExit(f"--lingers takes milliseconds, not {args.lingers!r}") from None
    if not lingers or min(lingers) < 0 or args.creates < 1 or args.rounds < 1:
        raise SystemExit("--lingers must be >= 0 ms, --creates and --rounds at least 1")
    uvloop.run(main(lingers, args.creates, args.rounds))
