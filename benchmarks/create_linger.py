"""A create loop's client CPU and wall time per create at each write-behind linger (how long
the Redis indexing of a stream of creates waits to carry more of them), alternated in one run
on this machine's embedded servers, in a throw-away schema:

    .venv/bin/python benchmarks/create_linger.py --lingers 2,10 --creates 3000 --rounds 2

CPU is `time.process_time` of this process (the client alone: the stores' CPU is not in it);
wall time is what the loop waited per create, each create awaited as the peers' enqueue loop
does (benchmarks/peers/compare.py)."""

from __future__ import annotations

import argparse
import time

import uvloop
from create_loop import create_one, create_runtime  # this folder, first on the script's path


async def main(lingers_ms: list[float], creates: int, rounds: int) -> None:
    async with create_runtime("create_linger", creates // 6) as rt:
        writer = rt.service.dispatch.writer
        for r in range(rounds):
            for ms in lingers_ms:
                await rt.service.indexed()
                writer.linger_s = ms / 1000
                cpu0, wall0 = time.process_time(), time.perf_counter()
                for _ in range(creates):
                    await create_one(rt)
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
