"""`jobharness bench core`: create / acquire / complete at fixed concurrency against the
configured servers, timed with monotonic clocks into HDR histograms. Runs in a throw-away
schema and key prefix, removed afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from hdrh.histogram import HdrHistogram

from core.contract import runfolder
from core.jobs.model import JobSpec, Lease
from core.service.jobs import JobService
from core.service.runtime import open_runtime
from core.settings import Settings, to_env
from loadtests.scratch import scratch_schema

Progress = Callable[[str, int, int], None]


def _latency(hist: HdrHistogram) -> dict[str, float]:
    """Percentiles of a microsecond histogram, in milliseconds."""
    return {
        "p50_ms": hist.get_value_at_percentile(50) / 1000,
        "p99_ms": hist.get_value_at_percentile(99) / 1000,
        "p999_ms": hist.get_value_at_percentile(99.9) / 1000,
        "max_ms": hist.get_max_value() / 1000,
        "mean_ms": round(hist.get_mean_value() / 1000, 3),
    }


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
        **_latency(hist),
    }


async def _open_phase(
    name: str,
    ops: int,
    rate: float,
    op: Callable[[int], Awaitable[None]],
    progress: Progress | None,
) -> dict[str, Any]:
    """Open loop: operation i is due at start + i / rate whether or not earlier ones have
    finished, and its latency counts from when it was due (no coordinated omission: a stall
    shows in every operation that should have started during it)."""
    hist = HdrHistogram(1, 60_000_000, 3)
    late = HdrHistogram(1, 60_000_000, 3)  # how late each operation started
    tasks: set[asyncio.Task[None]] = set()
    done = 0
    max_in_flight = 0

    async def one(i: int, due: float) -> None:
        nonlocal done
        late.record_value(max(1, int((time.perf_counter() - due) * 1e6)))
        await op(i)
        hist.record_value(max(1, int((time.perf_counter() - due) * 1e6)))
        done += 1
        if progress and done % 100 == 0:
            progress(name, done, ops)

    started = time.perf_counter()
    i = 0
    while i < ops:
        now = time.perf_counter()
        while i < ops and started + i / rate <= now:  # start every operation now due
            task = asyncio.create_task(one(i, started + i / rate))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1
        max_in_flight = max(max_in_flight, len(tasks))
        if i < ops:
            await asyncio.sleep(max(0.0, started + i / rate - time.perf_counter()))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - started
    if progress:
        progress(name, ops, ops)
    return {
        "ops": ops,
        "offered_ops_s": rate,
        "elapsed_s": round(elapsed, 3),
        "throughput_ops_s": round(ops / elapsed, 1),
        **_latency(hist),
        "start_late_p99_ms": late.get_value_at_percentile(99) / 1000,
        "max_in_flight": max_in_flight,
    }


WARM_UP_JOBS = 64


async def _warm_up(svc: JobService, concurrency: int) -> None:
    """Open every pooled connection and prepare every statement before timing: without it the
    first phase's tail is connection set-up, not the operation."""
    n = WARM_UP_JOBS

    async def one(i: int) -> None:
        await svc.create(JobSpec(job_type="noop", priority=1 + i % 5,
                                           payload={"warm": i}))
        lease = await svc.acquire(f"warm-{i % concurrency}")
        if lease is None:
            raise RuntimeError("bench: warm-up found no job")
        await svc.complete(lease.job_id, lease.token, {"ok": True})

    for _ in range(2):
        await asyncio.gather(*(one(i) for i in range(n // 2)))
        await asyncio.gather(*(svc.pool.fetchval("SELECT 1") for _ in range(concurrency + 2)),
                             *(svc.dispatch.ping() for _ in range(concurrency + 2)))


async def _phases(settings: Settings, *, ops: int, concurrency: int, seed: int, memory: bool,
                  progress: Progress | None, rate: float | None = None
                  ) -> tuple[dict[str, Any], int]:
    rng = random.Random(seed)
    priorities = [rng.randint(1, 5) for _ in range(ops)]
    leases: list[Lease] = []
    results: dict[str, Any] = {}
    async with open_runtime(settings, pool_size=concurrency + 2,
                            redis_connections=concurrency + 2, memory=memory) as rt:
        svc = rt.service
        await _warm_up(svc, concurrency)

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

        label = "memory on" if memory else "memory off"
        for name, op in (("create", create), ("acquire", acquire), ("complete", complete)):
            if rate is None:
                results[name] = await _phase(f"{name} ({label})", ops, concurrency, op,
                                             progress)
            else:
                results[name] = await _open_phase(f"{name} ({label}, {rate:g}/s offered)",
                                                  ops, rate, op, progress)
        completed = (await svc.counts())["COMPLETED"] - WARM_UP_JOBS
    return results, completed


async def bench_core(
    settings: Settings, *, ops: int, concurrency: int, seed: int = 1,
    progress: Progress | None = None, memory: str = "off", rate: float | None = None,
) -> dict[str, Any]:
    """Run create / acquire / complete, closed-loop at `concurrency` clients or, with `rate`,
    open-loop at that many operations per second offered (`concurrency` then sizes the
    connection pools); with memory="compare", alternate rounds with state memory off and on
    (an owner process consuming the events) and report the p99 ratio."""
    async with scratch_schema(settings, f"bench_{os.getpid()}") as scratch:
        if memory not in ("compare", "compare-emit"):
            results, completed = await _phases(scratch, ops=ops, concurrency=concurrency,
                                               seed=seed, memory=memory == "on",
                                               progress=progress, rate=rate)
            return {"benchmark": "core", "ops": ops, "concurrency": concurrency, "seed": seed,
                    "mode": "closed loop" if rate is None else "open loop",
                    "offered_ops_s": rate, "memory": memory, "completed": completed,
                    "operations": results}
        async with _owner_process(scratch, start=memory == "compare"):
            rounds: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
            for r in range(2):
                for mode in (("off", "on") if r % 2 == 0 else ("on", "off")):
                    res, _ = await _phases(scratch, ops=ops, concurrency=concurrency,
                                           seed=seed + r, memory=mode == "on",
                                           progress=progress)
                    rounds[mode].append(res)
    p99 = {mode: {op: statistics.median(r[op]["p99_ms"] for r in runs)
                  for op in ("create", "acquire", "complete")}
           for mode, runs in rounds.items()}
    return {"benchmark": "core", "ops": ops, "concurrency": concurrency, "seed": seed,
            "memory": memory, "rounds_per_mode": 2, "p99_ms_median": p99,
            "ratio_on_off": {op: round(p99["on"][op] / p99["off"][op], 3) for op in p99["on"]},
            "rounds": rounds}


async def bench_batch(
    settings: Settings, *, jobs: int, batch_size: int, concurrency: int,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """`create_batch` of `batch_size` no-op jobs from `concurrency` concurrent callers until
    `jobs` are created: jobs per second and each batch's latency. The specs are built before
    timing (the caller's work, not the library's)."""
    batches = [[JobSpec(job_type="noop", priority=1 + i % 5, payload={"i": i})
                for i in range(start, min(start + batch_size, jobs))]
               for start in range(0, jobs, batch_size)]
    async with scratch_schema(settings, f"bench_{os.getpid()}") as scratch, open_runtime(
            scratch, pool_size=concurrency + 2, redis_connections=concurrency + 2,
            memory=False) as rt:
        await _warm_up(rt.service, concurrency)
        hist = HdrHistogram(1, 60_000_000, 3)
        todo = iter(batches)
        done = 0

        async def caller() -> None:
            nonlocal done
            for batch in todo:
                t0 = time.perf_counter_ns()
                await rt.service.create_batch(batch)
                hist.record_value(max(1, (time.perf_counter_ns() - t0) // 1000))
                done += len(batch)
                if progress:
                    progress("jobs created", done, jobs)

        started = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(concurrency)))
        await rt.service.indexed()  # every job dispatchable, not only durable, in the time
        elapsed = time.perf_counter() - started
        stored = int(await rt.pool.fetchval(
            "SELECT count(*) FROM jobs WHERE payload ? 'i' AND status = 'PENDING'"))
        depths = await rt.dispatch.depths()
        queued = sum(depths[q] for q in ("high", "medium", "low"))
    return {"benchmark": "batch", "jobs": jobs, "batch_size": batch_size,
            "concurrency": concurrency, "stored": stored, "queued": queued,
            "elapsed_s": round(elapsed, 3), "throughput_jobs_s": round(jobs / elapsed, 1),
            "batch_p50_ms": hist.get_value_at_percentile(50) / 1000,
            "batch_p99_ms": hist.get_value_at_percentile(99) / 1000}


def with_limits(result: dict[str, Any], limits: dict[str, Any]) -> dict[str, Any]:
    """Each core operation's throughput as a share of the stores' limit for its statement."""
    if result.get("benchmark") == "api":  # one create per request: one single-row insert
        tps = limits["insert"]["tps"]
        return {**result, "limits": limits,
                "ratio_to_limits": round(result["throughput_req_s"] / tps, 3) if tps else None}
    if result.get("benchmark") == "batch":
        rows_s = limits["insert_batch"]["rows_s"]
        return {**result, "limits": limits,
                "ratio_to_limits": round(result["throughput_jobs_s"] / rows_s, 3)}
    ops = result.get("operations")
    if not ops:
        return {**result, "limits": limits}
    match = {"create": limits["insert"]["tps"], "acquire": limits["lease"]["tps"],
             "complete": limits["complete"]["tps"]}
    ratios = {op: round(ops[op]["throughput_ops_s"] / tps, 3) for op, tps in match.items()
              if op in ops and tps}
    return {**result, "limits": limits, "ratio_to_limits": ratios}


@contextlib.asynccontextmanager
async def _owner_process(settings: Settings, *, start: bool) -> AsyncIterator[None]:
    """A `jobharness state serve` process over a throw-away local Qdrant folder (none with
    `start=False`: the events then only reach the Redis stream, which is trimmed)."""
    if not start:
        yield
        return
    with tempfile.TemporaryDirectory(prefix="jh-bench-qdrant-") as tmp:
        env = {**os.environ, **to_env(settings), "JOBHARNESS_DATA_DIR": tmp}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "core.cli", "state", "serve", env=env,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        state = Path(tmp) / runfolder.MEMORY_OWNER_STATE
        deadline = time.monotonic() + 60
        while not state.exists():  # the owner writes this file once it serves
            if proc.returncode is not None or time.monotonic() > deadline:
                raise RuntimeError("bench: the memory owner did not start")
            await asyncio.sleep(0.05)
        try:
            yield
        finally:
            proc.terminate()
            await proc.wait()
