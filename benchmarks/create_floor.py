"""Where a single-create loop's time goes, by taking the layers away one at a time
(docs/performance.md), in a throw-away schema on this machine's embedded servers:

    .venv/bin/python benchmarks/create_floor.py --creates 3000 --rounds 3

Four loops of N creates, each awaited before the next, interleaved over the rounds:
- `create`: the library's create (validation, the merge of concurrent creates, the pool, the
  INSERT with its commit, the write-behind Redis indexing);
- `pool + insert`: the same INSERT statement, a connection borrowed from the pool for each;
- `insert`: the same INSERT on one connection held throughout;
- `minimal insert`: a three-column INSERT of the same payload on that connection (what the
  jobs table's other columns, defaults and indexes add).
Rates are medians; each layer's cost is the difference of the loops' times per create. Every
insert commits (durable before it is answered), as a create does."""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from create_loop import PAYLOAD, create_one, create_runtime  # this folder, first on the path

from core.store.queries import q

MINIMAL = "INSERT INTO jobs (id, job_type, payload) VALUES ($1, 'noop', $2::text::jsonb)"


async def main(creates: int, rounds: int) -> None:
    payload = json.dumps(PAYLOAD, separators=(",", ":"))

    async def insert(conn: Any) -> None:
        await conn.fetchrow(q("insert_job"), uuid.uuid4(), "noop", payload, 3, None, 5, 300.0,
                            None, 0.0, None)

    rates: dict[str, list[float]] = {}

    async def loop(name: str, one: Callable[[], Awaitable[Any]]) -> None:
        """`creates` calls of `one`, each awaited before the next: its rate this round."""
        t0 = time.perf_counter()
        for _ in range(creates):
            await one()
        rates.setdefault(name, []).append(creates / (time.perf_counter() - t0))

    async def pooled() -> None:
        async with rt.pool.acquire() as conn:
            await insert(conn)

    async with create_runtime("create_floor", creates // 6) as rt:
        for _ in range(rounds):
            await loop("create", lambda: create_one(rt))
            await loop("pool + insert", pooled)
            async with rt.pool.acquire() as held:
                await loop("insert", lambda: insert(held))
                await loop("minimal insert",
                           lambda: held.execute(MINIMAL, uuid.uuid4(), payload))
    print(f"{creates} creates per loop, {rounds} rounds (medians; rounds in brackets)")
    for name, values in rates.items():
        median = statistics.median(values)
        print(f"{name:>15}: {median:7.0f} /s  {1e6 / median:5.0f} us per create  "
              f"[{', '.join(f'{v:.0f}' for v in values)}]")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--creates", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if not (100 <= args.creates <= 100_000 and 1 <= args.rounds <= 20):
        ap.error("--creates must be 100..100000 and --rounds 1..20")
    asyncio.run(main(args.creates, args.rounds))
