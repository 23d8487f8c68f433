"""One round of the peer workload on pgqueuer, run by compare.py in the peers' own environment
(never imported by the project). In a database of its own (PEER_DSN): a client loop of N
single enqueues, each awaited (latency per call), then one queue manager with 100 concurrent
tasks drains them, on the event loop PEER_LOOP names (asyncio or uvloop). Prints JSON.

The drain is timed as jobharness' is, on the database's clock from the first pick to the last
completion recorded: pgqueuer's log rows ('picked' at the dequeue, 'successful' when the
completion is written; its worker buffers completions, up to 50 or 0.1 s). Its handlers' own
first start and last end, the measure before, is kept as `drain_handlers_jobs_s`."""

from __future__ import annotations

import asyncio
import json
import os
import time
from datetime import timedelta

import asyncpg
from peer_result import handshake, result
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

    handshake("drain")
    await qm.run(dequeue_timeout=timedelta(seconds=1), batch_size=slots // 2,
                 mode=QueueExecutionMode.drain, max_concurrent_tasks=slots,
                 log_aggregation_interval=timedelta(0))  # the log rows stay for the timing
    handshake("drained")
    window = await conn.fetchrow(
        "SELECT extract(epoch FROM max(created) FILTER (WHERE status = 'successful')"
        " - min(created) FILTER (WHERE status = 'picked')) AS s,"
        " count(*) FILTER (WHERE status = 'successful') AS n FROM pgqueuer_log")
    if window["n"] != jobs:
        raise SystemExit(f"pgqueuer recorded {window['n']} of {jobs} jobs as successful")
    print(json.dumps({
        **result("pgqueuer", jobs, drained=window["n"], drain_s=float(window["s"]),
                 enqueue_s=enqueue_s, enqueue_latencies_s=took),
        "drain_handlers_jobs_s": done[0] / (last[0] - first[0])}))


if __name__ == "__main__":
    if os.environ.get("PEER_LOOP") == "uvloop":
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())
