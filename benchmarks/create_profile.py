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
import time

from create_loop import create_one, create_runtime  # this folder, first on the script's path


async def main(creates: int, top: int) -> None:
    async with create_runtime("create_profile", creates // 6) as rt:
        prof = cProfile.Profile()
        t0 = time.perf_counter()
        prof.enable()
        for _ in range(creates):
            await create_one(rt)
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
