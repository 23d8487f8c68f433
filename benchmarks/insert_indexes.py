"""What the seed's index set on `jobs` costs a single durable insert (docs/performance.md), in
two throw-away schemas on this machine's embedded servers:

    .venv/bin/python benchmarks/insert_indexes.py --inserts 3000 --rounds 3

One schema keeps every index; in the other the indexes `--drop` names are dropped. Each round
times N single `insert_job` statements (each its own commit, one connection, as a create loop
sends them) on one schema and then on the other, so the two share the machine's state of the
moment; medians per round, the first sixth left out as warm-up."""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import asyncpg

from core.service.runtime import endpoints
from core.settings import Settings, load_settings
from core.store.queries import q
from loadtests.scratch import scratch_schema

PAYLOAD = json.dumps({"blob": "x" * 180})
DROP = "idx_jobs_type_status,idx_jobs_created_at,idx_jobs_status"


async def insert_loop(conn: asyncpg.Connection, n: int) -> float:
    """Median milliseconds of one insert with its commit."""
    took = []
    for _ in range(n):
        t0 = time.perf_counter()
        await conn.fetchrow(q("insert_job"), uuid.uuid4(), "noop", PAYLOAD, 5, None, 3, 300.0,
                            None, 0.0, None)
        took.append(time.perf_counter() - t0)
    return round(statistics.median(took[n // 6:]) * 1000, 3)


async def connect(scratch: Settings) -> asyncpg.Connection:
    assert scratch.pg_dsn
    return await asyncpg.connect(scratch.pg_dsn, server_settings={"search_path": scratch.schema})


async def main(inserts: int, rounds: int, drop: list[str]) -> None:
    with endpoints(load_settings(), keep_running=True) as settings:
        async with scratch_schema(settings, "idx_all") as every, \
                scratch_schema(settings, "idx_fewer") as fewer:
            full, lean = await connect(every), await connect(fewer)
            try:
                for name in drop:
                    await lean.execute(f'DROP INDEX "{name}"')
                results: dict[str, list[float]] = {"every index": [], "fewer": []}
                for _ in range(rounds):
                    results["every index"].append(await insert_loop(full, inserts))
                    results["fewer"].append(await insert_loop(lean, inserts))
            finally:
                await full.close()
                await lean.close()
    print(f"single insert with its commit, median ms per round ({inserts} inserts):")
    for name, values in results.items():
        print(f"  {name:12s} {values}")
    print(f"  (fewer: without {', '.join(drop)})")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--inserts", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--drop", default=DROP, help=f"indexes to drop in one schema ({DROP})")
    args = ap.parse_args()
    if args.inserts < 12 or args.rounds < 1:
        raise SystemExit("--inserts must be at least 12 and --rounds at least 1")
    asyncio.run(main(args.inserts, args.rounds, [d for d in args.drop.split(",") if d]))
