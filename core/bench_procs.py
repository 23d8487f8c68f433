"""Benchmarks of processes: `bench supervisor` (start-up time and memory per worker for N
workers, time from SIGKILL to a registered replacement) and `bench api` (HTTP create
throughput and latency, driven by an asyncio client in this process against a separate API
process). Each runs in a throw-away schema and key prefix."""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

import psutil

from core import migrate
from core.connect import connect_admin
from core.embedded import free_port
from core.runtime import Runtime, open_runtime
from core.settings import Settings, to_env

Progress = Callable[[str, int, int], None]


@contextlib.asynccontextmanager
async def scratch_runtime(settings: Settings, tag: str) -> AsyncIterator[Runtime]:
    settings = replace(settings, schema=tag, prefix=tag)
    try:
        async with open_runtime(settings, pool_size=6, redis_connections=6) as rt:
            await rt.dispatch.flush_prefix()
            try:
                yield rt
            finally:
                await rt.dispatch.flush_prefix()
    finally:
        conn = await connect_admin(settings)
        try:
            await migrate.rollback(conn, tag)
        finally:
            await conn.close()


async def _active(rt: Runtime, ids: list[str]) -> int:
    return int(await rt.pool.fetchval(
        "SELECT count(*) FROM workers WHERE id = ANY($1) AND status = 'ACTIVE'", ids))


async def _wait(pred: Callable[[], Any], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not await pred():
        if time.monotonic() > deadline:
            raise TimeoutError(f"bench: timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def bench_supervisor(settings: Settings, *, workers: int, kills: int,
                           progress: Progress | None = None) -> dict[str, Any]:
    from core.supervisor import Supervisor, SupervisorOptions

    tag = f"benchsup_{os.getpid()}"
    settings = replace(settings, heartbeat_interval_s=2.0, heartbeat_ttl_s=10.0)
    async with scratch_runtime(settings, tag) as rt:
        sup = Supervisor(rt.service, rt.settings, SupervisorOptions(
            workers=workers, name="bench", check_interval_s=0.1, max_replacements=kills + 1,
            reconcile_interval_s=None))
        stop = asyncio.Event()
        t0 = time.perf_counter()
        await sup.start()
        runner = asyncio.create_task(sup.run(stop))
        ids = [s.worker_id for s in sup.slots.values()]

        async def registered() -> bool:
            n = await _active(rt, ids)
            if progress:
                progress("workers registered", n, workers)
            return n == workers

        try:
            await _wait(registered, 300, "workers to register")
            startup_s = time.perf_counter() - t0
            rss, uss = [], []
            for slot in sup.slots.values():
                with contextlib.suppress(psutil.Error):
                    info = psutil.Process(slot.proc.pid).memory_full_info()
                    rss.append(info.rss)
                    uss.append(info.uss)
            replace_s = []
            for k in range(kills):
                slot = sup.slots[k]
                t1 = time.perf_counter()
                sup.signal_worker(slot.worker_id, "kill")
                new_ids = [sup.worker_id(slot.index, slot.generation + 1)]

                async def replaced(ids: list[str] = new_ids) -> bool:
                    return await _active(rt, ids) == 1

                await _wait(replaced, 60, "a replacement")
                replace_s.append(time.perf_counter() - t1)
                if progress:
                    progress("kill -> replacement", k + 1, kills)
        finally:
            stop.set()
            await runner
    mib = 1024 * 1024
    return {
        "benchmark": "supervisor",
        "workers": workers,
        "startup_s": round(startup_s, 2),
        "worker_rss_mib": {"median": round(statistics.median(rss) / mib, 1),
                           "max": round(max(rss) / mib, 1)},
        "worker_uss_mib": {"median": round(statistics.median(uss) / mib, 1),
                           "max": round(max(uss) / mib, 1)},
        "supervisor_rss_mib": round(psutil.Process().memory_info().rss / mib, 1),
        "kill_to_registered_replacement_s": {
            "runs": [round(x, 3) for x in replace_s],
            "median": round(statistics.median(replace_s), 3) if replace_s else None},
    }


async def bench_api(settings: Settings, *, requests: int, concurrency: int,
                    progress: Progress | None = None) -> dict[str, Any]:
    import httpx
    from hdrh.histogram import HdrHistogram

    tag = f"benchapi_{os.getpid()}"
    async with scratch_runtime(settings, tag) as rt:
        port = free_port()
        api = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "core.cli", "api", "--port", str(port),
            "--pool-size", str(min(concurrency + 2, 20)),
            env={**os.environ, **to_env(rt.settings)}, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        hist = HdrHistogram(1, 60_000_000, 3)
        statuses: dict[int, int] = {}
        try:
            limits = httpx.Limits(max_connections=concurrency)
            async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as http:
                async def ready() -> bool:
                    try:
                        return (await http.get("/health")).status_code == 200
                    except httpx.TransportError:
                        return False

                await _wait(ready, 30, "the API to start")
                todo = iter(range(requests))
                done = 0

                async def client() -> None:
                    nonlocal done
                    for i in todo:
                        body = {"job_type": "noop", "priority": 1 + i % 5, "payload": {"i": i}}
                        t0 = time.perf_counter_ns()
                        r = await http.post("/jobs", json=body)
                        hist.record_value(max(1, (time.perf_counter_ns() - t0) // 1000))
                        statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                        done += 1
                        if progress and done % 200 == 0:
                            progress("POST /jobs", done, requests)

                t0 = time.perf_counter()
                await asyncio.gather(*(client() for _ in range(concurrency)))
                elapsed = time.perf_counter() - t0
        finally:
            api.terminate()
            await api.wait()
    return {
        "benchmark": "api",
        "requests": requests,
        "concurrency": concurrency,
        "statuses": statuses,
        "throughput_req_s": round(requests / elapsed, 1),
        "p50_ms": hist.get_value_at_percentile(50) / 1000,
        "p99_ms": hist.get_value_at_percentile(99) / 1000,
        "p999_ms": hist.get_value_at_percentile(99.9) / 1000,
        "max_ms": hist.get_max_value() / 1000,
    }


async def bench_e2e(settings: Settings, *, jobs: int, workers: int, concurrency: int,
                    batch: int = 500, progress: Progress | None = None) -> dict[str, Any]:
    """N no-op jobs through W worker processes x C: jobs per second from the first create to
    the last completion, and end-to-end latency percentiles (PostgreSQL's clock)."""
    from core.model import JobSpec
    from core.supervisor import Supervisor, SupervisorOptions

    tag = f"benche2e_{os.getpid()}"
    settings = replace(settings, heartbeat_interval_s=2.0, heartbeat_ttl_s=10.0)
    async with scratch_runtime(settings, tag) as rt:
        sup = Supervisor(rt.service, rt.settings, SupervisorOptions(
            workers=workers, concurrency=concurrency, name="e2e", check_interval_s=0.5,
            reconcile_interval_s=None))
        stop = asyncio.Event()
        await sup.start()
        runner = asyncio.create_task(sup.run(stop))
        ids = [s.worker_id for s in sup.slots.values()]
        try:
            await _wait(lambda: _all_active(rt, ids), 300, "workers to register")
            t0 = time.perf_counter()
            for start in range(0, jobs, batch):
                await rt.service.create_batch(
                    [JobSpec(job_type="noop") for _ in range(min(batch, jobs - start))])
            created_s = time.perf_counter() - t0
            deadline = time.monotonic() + 600
            while (done := await _completed(rt)) < jobs:
                if progress:
                    progress("jobs completed", done, jobs)
                if time.monotonic() > deadline:
                    raise TimeoutError(f"bench: {done} of {jobs} jobs completed in 600 s")
                await asyncio.sleep(0.05)  # the measurement's sampling period
            wall_s = time.perf_counter() - t0
            completed = done
            row = await rt.pool.fetchrow(
                "SELECT percentile_disc(ARRAY[0.5, 0.99, 0.999]) WITHIN GROUP (ORDER BY"
                " extract(epoch FROM completed_at - created_at) * 1000) AS p FROM jobs")
        finally:
            stop.set()
            await runner
    assert row is not None
    p50, p99, p999 = (round(float(x), 1) for x in row["p"])
    return {"benchmark": "e2e", "jobs": jobs, "workers": workers, "concurrency": concurrency,
            "completed": completed, "create_s": round(created_s, 2),
            "wall_s": round(wall_s, 2),
            "throughput_jobs_s": round(jobs / wall_s, 1),
            "end_to_end_ms": {"p50": p50, "p99": p99, "p99.9": p999}}


async def _all_active(rt: Runtime, ids: list[str]) -> bool:
    return await _active(rt, ids) == len(ids)


async def _completed(rt: Runtime) -> int:
    return int(await rt.pool.fetchval("SELECT count(*) FROM jobs WHERE status = 'COMPLETED'"))


def e2e_with_limits(result: dict[str, Any], limits: dict[str, Any]) -> dict[str, Any]:
    """A job costs one insert, one lease and one completion on the same server: the ceiling
    for whole jobs is the harmonic combination of the three statements' rates."""
    rates = [limits[s]["tps"] for s in ("insert", "lease", "complete")]
    if not all(rates):
        return {**result, "limits": limits}
    ceiling = 1 / sum(1 / r for r in rates)
    return {**result, "limits": limits, "limit_jobs_s": round(ceiling, 1),
            "ratio_to_limits": round(result["throughput_jobs_s"] / ceiling, 3)}
