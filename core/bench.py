"""`jobharness bench core`: create / acquire / complete at fixed concurrency against the
configured servers, timed with monotonic clocks into HDR histograms. Runs in a throw-away
schema and key prefix, removed afterwards."""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from hdrh.histogram import HdrHistogram

from core import migrate
from core.connect import connect_admin
from core.model import JobSpec, Lease
from core.runtime import open_runtime
from core.settings import Settings

Progress = Callable[[str, int, int], None]


async def _phase(
    name: str,
    ops: int,
    concurrency: int,
    op: Callable[[int], Awaitable[None]],
    progress: Progress | None,
) -> dict[str, Any]:
    hist = HdrHistogram(1, 60_000_000, 3)  # microseconds, 1 µs .. 60 s
    counter = iter(range(ops))
    done = 0

    async def runner() -> None:
        nonlocal done
        for i in counter:
            t0 = time.perf_counter_ns()
            await op(i)
            hist.record_value(max(1, (time.perf_counter_ns() - t0) // 1000))
            done += 1
            if progress and done % 100 == 0:
                progress(name, done, ops)

    started = time.perf_counter()
    await asyncio.gather(*(runner() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    if progress:
        progress(name, ops, ops)
    return {
        "ops": ops,
        "concurrency": concurrency,
        "elapsed_s": round(elapsed, 3),
        "throughput_ops_s": round(ops / elapsed, 1),
        "p50_ms": hist.get_value_at_percentile(50) / 1000,
        "p99_ms": hist.get_value_at_percentile(99) / 1000,
        "p999_ms": hist.get_value_at_percentile(99.9) / 1000,
        "max_ms": hist.get_max_value() / 1000,
        "mean_ms": round(hist.get_mean_value() / 1000, 3),
    }


async def bench_core(
    settings: Settings, *, ops: int, concurrency: int, seed: int = 1,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Run the three phases; returns the JSON-ready result."""
    tag = f"bench_{os.getpid()}"
    settings = replace(settings, schema=tag, prefix=tag)
    rng = random.Random(seed)
    priorities = [rng.randint(1, 5) for _ in range(ops)]
    leases: list[Lease] = []
    results: dict[str, Any] = {}
    try:
        async with open_runtime(settings, pool_size=concurrency + 2,
                                redis_connections=concurrency + 2) as rt:
            await rt.dispatch.flush_prefix()
            svc = rt.service

            async def create(i: int) -> None:
                await svc.create(JobSpec(job_type="noop", priority=priorities[i], payload={"i": i}))

            async def acquire(i: int) -> None:
                lease = await svc.acquire(f"bench-{i % concurrency}")
                if lease is None:
                    raise RuntimeError("bench: acquire found no job")
                leases.append(lease)

            async def complete(i: int) -> None:
                lease = leases[i]
                await svc.complete(lease.job_id, lease.token, {"ok": True})

            for name, op in (("create", create), ("acquire", acquire), ("complete", complete)):
                results[name] = await _phase(name, ops, concurrency, op, progress)
            counts = await svc.counts()
            await rt.dispatch.flush_prefix()
    finally:
        conn = await connect_admin(settings)
        try:
            await migrate.rollback(conn, tag)
        finally:
            await conn.close()
    return {
        "benchmark": "core",
        "ops": ops,
        "concurrency": concurrency,
        "seed": seed,
        "completed": counts["COMPLETED"],
        "operations": results,
    }
