"""Benchmarks of processes: `bench supervisor` (start-up time and memory per worker for N
workers, time from SIGKILL to a registered replacement) and `bench api` (HTTP create
throughput and latency, driven by an asyncio client in this process against a separate API
process). Each runs in a throw-away schema and key prefix."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

import psutil

from core.infra.embedded import free_port
from core.service.runtime import Runtime, open_runtime
from core.settings import Settings, to_env
from loadtests.scratch import scratch_schema

Progress = Callable[[str, int, int], None]


@contextlib.asynccontextmanager
async def scratch_runtime(settings: Settings, tag: str) -> AsyncIterator[Runtime]:
    async with scratch_schema(settings, tag) as scratch, open_runtime(
            scratch, pool_size=6, redis_connections=6, migrate_first=False) as rt:
        yield rt


async def active_count(rt: Runtime, ids: list[str]) -> int:
    return int(await rt.pool.fetchval(
        "SELECT count(*) FROM workers WHERE id = ANY($1) AND status = 'ACTIVE'", ids))


async def wait_until(pred: Callable[[], Any], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not await pred():
        if time.monotonic() > deadline:
            raise TimeoutError(f"bench: timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def bench_supervisor(settings: Settings, *, workers: int, kills: int,
                           progress: Progress | None = None) -> dict[str, Any]:
    from core.supervisor.supervisor import Supervisor, SupervisorOptions

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
            n = await active_count(rt, ids)
            if progress:
                progress("workers registered", n, workers)
            return n == workers

        try:
            await wait_until(registered, 300, "workers to register")
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
                    return await active_count(rt, ids) == 1

                await wait_until(replaced, 60, "a replacement")
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


class _HttpConnection:
    """One keep-alive HTTP/1.1 connection sending the same request again and again: a load
    generator lean enough (one write and a header parse per request, in C under uvloop) that
    the server, not the client, is what gets measured."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> _HttpConnection:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def send(self, request: bytes) -> int:
        """Send one request; return the response status (the body is read and dropped)."""
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        if length:
            await self.reader.readexactly(length)
        return status

    def close(self) -> None:
        self.writer.close()


def _post(path: str, body: bytes, token: str | None = None) -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"{auth}Content-Length: {len(body)}\r\n\r\n").encode() + body


async def _start_api(settings: Settings, pool_size: int) -> tuple[asyncio.subprocess.Process,
                                                                 int]:
    port = free_port()
    api = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "core.cli", "api", "--port", str(port),
        "--pool-size", str(pool_size), env={**os.environ, **to_env(settings)},
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)

    async def ready() -> bool:
        if api.returncode is not None:
            raise RuntimeError(f"bench: the API process exited with {api.returncode}")
        try:
            conn = await _HttpConnection.open(port)
        except OSError:
            return False
        try:
            health = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
            return await conn.send(health) == 200
        finally:
            conn.close()

    await wait_until(ready, 60, "the API to start")
    return api, port


async def bench_api(settings: Settings, *, requests: int, concurrency: int,
                    processes: int = 1, progress: Progress | None = None) -> dict[str, Any]:
    """POST /jobs (one job each) over `concurrency` keep-alive connections spread over
    `processes` API processes (each its own port, as replicas behind a balancer would be)."""
    from hdrh.histogram import HdrHistogram

    tag = f"benchapi_{os.getpid()}"
    async with scratch_runtime(settings, tag) as rt:
        pool_size = max(4, min(concurrency // processes + 2, 20))
        apis = await asyncio.gather(*(_start_api(rt.settings, pool_size)
                                      for _ in range(processes)))
        hist = HdrHistogram(1, 60_000_000, 3)
        statuses: dict[int, int] = {}
        try:
            conns = [await _HttpConnection.open(apis[k % processes][1])
                     for k in range(concurrency)]
            bodies = [_post("/jobs", json.dumps(
                {"job_type": "noop", "priority": 1 + i % 5, "payload": {"i": i}}).encode(),
                settings.api_token) for i in range(min(requests, 1000))]
            for conn in conns:  # one request per connection before timing
                await conn.send(bodies[0])
            todo = iter(range(requests))
            done = 0

            async def client(conn: _HttpConnection) -> None:
                nonlocal done
                for i in todo:
                    t0 = time.perf_counter_ns()
                    status = await conn.send(bodies[i % len(bodies)])
                    hist.record_value(max(1, (time.perf_counter_ns() - t0) // 1000))
                    statuses[status] = statuses.get(status, 0) + 1
                    done += 1
                    if progress and done % 500 == 0:
                        progress("POST /jobs", done, requests)

            t0 = time.perf_counter()
            await asyncio.gather(*(client(c) for c in conns))
            elapsed = time.perf_counter() - t0
            for conn in conns:
                conn.close()
            stored = int(await rt.pool.fetchval("SELECT count(*) FROM jobs"))
        finally:
            for api, _ in apis:
                api.terminate()
            await asyncio.gather(*(api.wait() for api, _ in apis))
    return {
        "benchmark": "api",
        "requests": requests,
        "concurrency": concurrency,
        "processes": processes,
        "statuses": statuses,
        "jobs_stored": stored,
        "throughput_req_s": round(requests / elapsed, 1),
        "p50_ms": hist.get_value_at_percentile(50) / 1000,
        "p99_ms": hist.get_value_at_percentile(99) / 1000,
        "p999_ms": hist.get_value_at_percentile(99.9) / 1000,
        "max_ms": hist.get_max_value() / 1000,
    }


async def bench_e2e(settings: Settings, *, jobs: int, workers: int, concurrency: int,
                    batch: int = 500, worker_nice: int = 0,
                    progress: Progress | None = None) -> dict[str, Any]:
    """N no-op jobs through W worker processes x C: jobs per second from the first create to
    the last completion, and end-to-end latency percentiles (PostgreSQL's clock)."""
    from core.jobs.model import JobSpec
    from core.supervisor.supervisor import Supervisor, SupervisorOptions

    tag = f"benche2e_{os.getpid()}"
    settings = replace(settings, heartbeat_interval_s=2.0, heartbeat_ttl_s=10.0)
    async with scratch_runtime(settings, tag) as rt:
        sup = Supervisor(rt.service, rt.settings, SupervisorOptions(
            workers=workers, concurrency=concurrency, name="e2e", check_interval_s=0.5,
            reconcile_interval_s=None, worker_nice=worker_nice))
        stop = asyncio.Event()
        since = await rt.pool.fetchval("SELECT clock_timestamp()")
        await sup.start()
        runner = asyncio.create_task(sup.run(stop))
        ids = [s.worker_id for s in sup.slots.values()]
        try:
            await wait_until(lambda: all_active(rt, ids), 300, "workers to register")
            t0 = time.perf_counter()
            for start in range(0, jobs, batch):
                await rt.service.create_batch(
                    [JobSpec(job_type="noop") for _ in range(min(batch, jobs - start))])
            created_s = time.perf_counter() - t0
            deadline = time.monotonic() + 600
            while (done := await completed_by_workers_since(rt, since)) < jobs:
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
            "worker_nice": worker_nice, "completed": completed, "create_s": round(created_s, 2),
            "wall_s": round(wall_s, 2),
            "throughput_jobs_s": round(jobs / wall_s, 1),
            "end_to_end_ms": {"p50": p50, "p99": p99, "p99.9": p999}}


async def all_active(rt: Runtime, ids: list[str]) -> bool:
    return await active_count(rt, ids) == len(ids)


async def completed_count(rt: Runtime) -> int:
    return int(await rt.pool.fetchval("SELECT count(*) FROM jobs WHERE status = 'COMPLETED'"))


async def completed_by_workers_since(rt: Runtime, since: Any) -> int:
    """Jobs completed by the workers registered at or after `since` (PostgreSQL's clock): the
    sum of their counters, which each completion raises in its own statement. A poll of the
    progress of a run costs a read per worker, not a count of every completed job (which
    grows with the run and, polled ten times a second, took a tenth of PostgreSQL's CPU from
    the drain it measured)."""
    return int(await rt.pool.fetchval(
        "SELECT coalesce(sum(jobs_completed), 0) FROM workers WHERE registered_at >= $1", since))


def e2e_with_limits(result: dict[str, Any], limits: dict[str, Any]) -> dict[str, Any]:
    """A job costs one insert, one lease and one completion on the same server: the ceiling
    for whole jobs is the harmonic combination of the three statements' rates."""
    rates = [limits[s]["tps"] for s in ("insert", "lease", "complete")]
    if not all(rates):
        return {**result, "limits": limits}
    ceiling = 1 / sum(1 / r for r in rates)
    return {**result, "limits": limits, "limit_jobs_s": round(ceiling, 1),
            "ratio_to_limits": round(result["throughput_jobs_s"] / ceiling, 3)}
