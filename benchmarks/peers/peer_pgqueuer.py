"""One round of the peer workload on pgqueuer, run by compare.py in the peers' own environment
(never imported by the project). In a database of its own (PEER_DSN): a client loop of N
single enqueues, each awaited (latency per call), then one queue manager with 100 concurrent
tasks drains them (time from the first job's start to the last one's end), on the event loop
PEER_LOOP names (asyncio or uvloop). Prints JSON."""

from __future__ import annotations

import asyncio
import json
import os
import time
from datetime import timedelta

import asyncpg
from peer_result import result
from pgqueuer import AsyncpgDriver, Job, Queries, QueueManager
from pgqueuer.domain.types import QueueExecutionMode

PAYLOAD = json.dumps({"blob": "x" * 180}).encode()  # ~200 bytes, as the others


async def main() -> None:
    dsn, jobs, slots = os.environ["PEER_DSN"], int(os.environ["PEER_JOBS"]), int(
        os.environ["PEER_SLOTS"])
    conn = await asyncpg.connect(dsn)
    queries = Queries(AsyncpgDriver(conn))
    await queries.install()
    took = []
    t0 = time.perf_counter()
    for _ in range(jobs):
        s = time.perf_counter()
        await queries.enqueue("noop", PAYLOAD, 0)
        took.append(time.perf_counter() - s)
    enqueue_s = time.perf_counter() - t0

    first, last, done = [0.0], [0.0], [0]
    qm = QueueManager(Queries(AsyncpgDriver(await asyncpg.connect(dsn))))

    @qm.entrypoint("noop")
    async def noop(job: Job) -> None:
        now = time.perf_counter()
        if not first[0]:
            first[0] = now
        done[0] += 1
        last[0] = time.perf_counter()

    await qm.run(dequeue_timeout=timedelta(seconds=1), batch_size=slots // 2,
                 mode=QueueExecutionMode.drain, max_concurrent_tasks=slots)
    print(json.dumps(result("pgqueuer", jobs, drained=done[0], drain_s=last[0] - first[0],
                            enqueue_s=enqueue_s, enqueue_latencies_s=took)))


if __name__ == "__main__":
    if os.environ.get("PEER_LOOP") == "uvloop":
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())
