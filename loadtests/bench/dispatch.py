"""`bench dispatch`: what dispatch costs as the number of tenants grows. For each tenant count
the same jobs (no-op, a ~200-byte payload) are queued over that many tenants in a throw-away
schema and prefix, then:

- acquire: single acquisitions one after the other (the Redis script, then the lease in
  PostgreSQL), their p50 / p99, and the Redis server's CPU per acquire script call, from
  `INFO commandstats` (only the acquire script runs meanwhile);
- drain: one worker process with `--concurrency` slots takes the rest, jobs per second from
  the first start to the last completion (PostgreSQL's clock).

Rows are interleaved over `--rounds` rounds and reported as medians, each with its ratio to
the one-tenant row (the first count) of the same run."""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from core.jobs.model import JobSpec
from core.service.runtime import Runtime
from core.settings import Settings
from loadtests.bench.cpu import CpuMeter
from loadtests.bench.procs import (
    all_active,
    completed_by_workers_since,
    completed_count,
    scratch_runtime,
    wait_until,
)

Progress = Callable[[str, int, int], None]
PAYLOAD = {"blob": "x" * 180}  # ~200 bytes as JSON


async def _script_cpu(rt: Runtime) -> tuple[int, int]:
    """Script calls that ran, and the server's CPU in them: a call refused with NOSCRIPT (the
    first of a script the server has not loaded, sent again loaded) counts in `calls` and in
    `failed_calls`, and ran nothing."""
    stats = await rt.dispatch.client.info("commandstats")
    row = stats.get("cmdstat_evalsha", {"calls": 0, "usec": 0})
    return int(row["calls"]) - int(row.get("failed_calls", 0)), int(row["usec"])


async def _queue(rt: Runtime, jobs: int, tenants: int, progress: Progress | None) -> None:
    batch = 5000
    for start in range(0, jobs, batch):
        await rt.service.create_batch([
            JobSpec(job_type="noop", payload=PAYLOAD, tenant=f"tenant-{i % tenants}")
            for i in range(start, min(start + batch, jobs))])
        if progress:
            progress(f"queue over {tenants} tenants", min(start + batch, jobs), jobs)
    # creates are indexed write-behind: the acquire phase's script statistics must not count
    # the indexing's own script calls
    await rt.service.indexed()


async def _acquire_phase(rt: Runtime, acquires: int) -> dict[str, float]:
    calls0, usec0 = await _script_cpu(rt)
    took, leases = [], []
    for i in range(acquires):
        t0 = time.perf_counter()
        lease = await rt.service.acquire(f"bench-{i % 4}")
        took.append((time.perf_counter() - t0) * 1000)
        if lease is not None:
            leases.append(lease)
    calls1, usec1 = await _script_cpu(rt)
    for lease in leases:
        await rt.service.complete(lease.job_id, lease.token)
    took.sort()
    return {"acquire_p50_ms": round(statistics.median(took), 3),
            "acquire_p99_ms": round(took[int(0.99 * (len(took) - 1))], 3),
            "redis_us_per_acquire": round((usec1 - usec0) / max(1, calls1 - calls0), 1),
            "script_calls": calls1 - calls0,  # what the CPU figure is averaged over
            "acquired": len(leases)}


async def drain(rt: Runtime, jobs: int, *, processes: int = 1, concurrency: int,
                prefetch: int = 0, progress: Progress | None = None,
                label: str = "drain", cpu: CpuMeter | None = None) -> float:
    """Jobs per second `processes` worker processes x `concurrency` (each holding up to
    `prefetch` jobs leased ahead) complete until `jobs` are COMPLETED, from the first start to
    the last end of the executions they ran (PostgreSQL's clock). `cpu`, if given, is opened
    once the workers have registered and closed at the last completion seen."""
    from core.supervisor.supervisor import Supervisor, SupervisorOptions

    before = await completed_count(rt)
    started = await rt.pool.fetchval("SELECT clock_timestamp()")
    sup = Supervisor(rt.service, rt.settings, SupervisorOptions(
        workers=processes, concurrency=concurrency, prefetch=prefetch, name="drain",
        check_interval_s=0.5,
        reconcile_interval_s=None))
    stop = asyncio.Event()
    await sup.start()
    runner = asyncio.create_task(sup.run(stop))
    try:
        await wait_until(lambda: all_active(rt, [s.worker_id for s in sup.slots.values()]), 120,
                         "the workers to register")
        deadline = time.monotonic() + 1200
        done = before + await completed_by_workers_since(rt, started)
        if cpu:
            cpu.start(done)
        while done < jobs:
            if progress:
                progress(label, done, jobs)
            if time.monotonic() > deadline:
                raise TimeoutError(f"bench: {done} of {jobs} jobs completed in 1200 s")
            await asyncio.sleep(0.1)  # the measurement's sampling period
            done = before + await completed_by_workers_since(rt, started)
        if cpu:
            cpu.stop(done)
        if progress:
            progress(label, done, jobs)
        span = await rt.pool.fetchval(
            "SELECT extract(epoch FROM max(finished_at) - min(started_at)) FROM "
            "job_executions WHERE started_at >= $1", started)
    finally:
        stop.set()
        await runner
    return (jobs - before) / float(span)


async def _row(settings: Settings, *, tenants: int, jobs: int, acquires: int,
               concurrency: int, progress: Progress | None) -> dict[str, float]:
    tag = f"benchdisp_{os.getpid()}"
    settings = replace(settings, heartbeat_interval_s=2.0, heartbeat_ttl_s=10.0, memory=False,
                       lease_s=600.0)
    async with scratch_runtime(settings, tag) as rt:
        await _queue(rt, jobs, tenants, progress)
        row = await _acquire_phase(rt, acquires)
        row["drain_jobs_s"] = round(await drain(
            rt, jobs, concurrency=concurrency, progress=progress,
            label=f"drain over {tenants} tenants"), 1)
    return row


async def bench_dispatch(settings: Settings, *, tenants: list[int], jobs: int, acquires: int,
                         concurrency: int, rounds: int,
                         progress: Progress | None = None) -> dict[str, Any]:
    jobs = max(jobs, max(tenants))  # every tenant has a job queued
    samples: dict[int, list[dict[str, float]]] = {t: [] for t in tenants}
    for _ in range(rounds):
        for t in tenants:  # interleaved: a drift of the machine spreads over every row
            samples[t].append(await _row(settings, tenants=t, jobs=jobs, acquires=acquires,
                                         concurrency=concurrency, progress=progress))
    rows = []
    for t in tenants:
        med = {k: round(statistics.median(s[k] for s in samples[t]), 3)
               for k in samples[t][0] if k != "acquired"}
        rows.append({"tenants": t, **med})
    base = rows[0]
    for r in rows:
        r["drain_ratio"] = round(r["drain_jobs_s"] / base["drain_jobs_s"], 3)
        r["redis_cpu_ratio"] = round(r["redis_us_per_acquire"]
                                     / max(base["redis_us_per_acquire"], 0.1), 3)
    return {"benchmark": "dispatch", "jobs": jobs, "acquires": acquires,
            "worker": f"1 process x {concurrency}", "rounds": rounds, "rows": rows}
