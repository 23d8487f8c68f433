"""`jobharness worker`: one worker process.

It registers, heartbeats to Redis and PostgreSQL with its health metrics (each heartbeat is
also stored as a sample), runs jobs, and drains on SIGTERM. Connection budget: two PostgreSQL
connections and two Redis connections (one for commands, one parked on BLPOP). A worker told
by its heartbeat that it was declared FAILED (replaced while paused or partitioned) or
QUARANTINED exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from core.errors import StoreUnavailable
from core.infra.serving import run_async, stop_on_signals
from core.service.jobs import JobService
from core.service.runtime import open_runtime
from core.settings import Settings
from core.worker.clock import install_skew
from core.worker.faults import FaultInjector
from core.worker.handlers import Handler, build_registry
from core.worker.loop import Worker

log = logging.getLogger("jobharness.worker")
DECLARED_DEAD = ("FAILED", "STOPPED", "QUARANTINED")


@dataclass(frozen=True, kw_only=True)
class WorkerOptions:
    worker_id: str
    capabilities: tuple[str, ...] = ()
    concurrency: int = 1
    prefetch: int = 0  # jobs leased ahead of free slots (core/worker/loop.py)
    handlers: Mapping[str, str] | None = None  # job_type -> "module:function"
    drain_timeout_s: float = 10.0
    supervisor: str | None = None
    nice: int = 0  # added to the process's niceness: > 0 yields the CPU to the API and stores
    clock_skew_s: float = 0.0  # drills: this process's time of day runs that far off


MAX_BUFFERED = 600  # samples kept (the newest) while PostgreSQL cannot take them


async def _health_samples(service: JobService, worker: Worker, stop: asyncio.Event) -> None:
    """A health sample every `health_sample_s` (1 s), whatever the heartbeat interval (the
    seed's 30 s is far too coarse for the failure predictor), sent as it is taken: the
    predictor's features read a late sample as a stalled worker. Samples PostgreSQL could not
    take go with the next one, each dated by its age."""
    every = service.settings.health_sample_s
    buffered: deque[tuple[float, dict[str, Any]]] = deque(maxlen=MAX_BUFFERED)
    while True:
        buffered.append((time.monotonic(), worker.health.sample().as_dict()))
        now = time.monotonic()
        try:
            await service.record_health(worker.worker_id, [(now - t, s) for t, s in buffered])
            buffered.clear()
        except StoreUnavailable:
            pass  # kept (the newest MAX_BUFFERED) for the next try
        if stop.is_set():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=every)


async def heartbeats(service: JobService, worker: Worker, stop: asyncio.Event) -> None:
    """Beat both stores every interval, each half as a task of its own, one at a time per
    store: a call that hangs in one store (a connection caught in a partition, a Redis
    connection queued behind slow commands) must not hold back the other half, or a fault of
    one store would get a live worker replaced (invariant 5). A beat whose previous one in
    the same store is still out is skipped for that store."""
    interval = service.settings.heartbeat_interval_s
    redis: asyncio.Task[bool] | None = None
    pg: asyncio.Task[str | None] | None = None
    try:
        while not stop.is_set():
            latest = worker.health.latest or worker.health.sample()
            sample = latest.as_dict()
            if redis is None or redis.done():
                if redis is not None:
                    redis.result()  # False: Redis unreachable; anything unexpected is raised
                redis = asyncio.create_task(
                    service.heartbeat_redis(worker.worker_id, json.dumps(sample)))
            if pg is not None and pg.done():
                try:
                    status = pg.result()
                except StoreUnavailable:
                    status = None  # PostgreSQL unreachable: the Redis key carries the beat
                pg = None
                if status in DECLARED_DEAD:
                    log.warning("worker %s was declared %s: exiting", worker.worker_id, status)
                    worker.stats["declared_dead"] += 1
                    stop.set()
                    return
            if pg is None:
                pg = asyncio.create_task(service.heartbeat_postgres(worker.worker_id, sample))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval)
    finally:
        for task in (redis, pg):
            if task is not None:
                task.cancel()
        await asyncio.gather(*(t for t in (redis, pg) if t is not None),
                             return_exceptions=True)


async def run_worker_process(settings: Settings, opts: WorkerOptions) -> int:
    """Run one worker until SIGTERM/SIGINT; returns the process exit code."""
    if opts.nice:
        os.nice(opts.nice)
    if opts.clock_skew_s:
        install_skew(opts.clock_skew_s)
    handlers = build_registry(opts.handlers, synthetic=settings.synthetic_on)
    stop = stop_on_signals()
    # the connection budget: two PostgreSQL connections, one Redis connection for commands
    # and one parked waiting for work
    async with contextlib.AsyncExitStack() as stack:
        rt = await when_ready(stop, "PostgreSQL at start", lambda: stack.enter_async_context(
            open_runtime(settings, pool_size=2, redis_connections=1, blocking_connections=1,
                         migrate_first=False)))
        return 0 if rt is None else await _serve(rt.service, handlers, opts, stop)


async def when_ready(stop: asyncio.Event, what: str, op: Any) -> Any:
    """`await op()` until it gets past a store outage (None if `stop` is set first): a worker
    started while PostgreSQL is away waits for it, with backoff, instead of exiting and being
    restarted in a loop (a PostgreSQL outage is not a worker outage)."""
    delay = 0.25
    while not stop.is_set():
        try:
            return await op()
        except StoreUnavailable as exc:
            if delay == 0.25:  # said once per wait
                log.warning("%s unavailable (%s): waiting for it", what, exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=delay)
        delay = min(5.0, delay * 2)
    return None


async def _serve(service: JobService, handlers: dict[str, Handler],
                 opts: WorkerOptions, stop: asyncio.Event) -> int:
    worker = Worker(service, opts.worker_id, handlers, capabilities=opts.capabilities,
                    concurrency=opts.concurrency, drain_timeout_s=opts.drain_timeout_s,
                    prefetch=opts.prefetch)
    FaultInjector(service.settings.data_dir, opts.worker_id, worker).install()  # SIGUSR1

    async def register() -> bool:
        await service.register_worker(
            opts.worker_id, opts.capabilities, concurrency=opts.concurrency,
            hostname=socket.gethostname(), pid=os.getpid(),
            metadata={k: v for k, v in (("supervisor", opts.supervisor),
                                        ("clock_skew_s", opts.clock_skew_s)) if v})
        return True

    if await when_ready(stop, "PostgreSQL for registration", register) is None:
        return 0
    log.info("worker %s started (pid %d%s)", opts.worker_id, os.getpid(),
             f", clock {opts.clock_skew_s:+g} s off" if opts.clock_skew_s else "")
    samples = asyncio.create_task(_health_samples(service, worker, stop))
    beats = asyncio.create_task(heartbeats(service, worker, stop))
    lag = asyncio.create_task(worker.health.watch_loop_lag(stop))
    await worker.run(stop)
    stop.set()
    await asyncio.gather(samples, beats, lag, return_exceptions=True)
    with contextlib.suppress(StoreUnavailable):
        await service.deregister_worker(opts.worker_id)
    breaker = service.dispatch.breaker
    log.info("worker %s stopped: %s; service %s; Redis failures %s; breaker trips %d, probes "
             "failed %s", opts.worker_id, dict(worker.stats), dict(service.stats),
             dict(service.dispatch.failure_causes), breaker.trips, dict(breaker.probes_failed))
    return 0


def parse_handlers(values: Sequence[str]) -> dict[str, str]:
    """`type=module:function` pairs from the command line."""
    out: dict[str, str] = {}
    for item in values:
        job_type, sep, path = item.partition("=")
        if not sep or not job_type or ":" not in path:
            raise ValueError(f"--handler {item!r} must look like type=package.module:function")
        out[job_type] = path
    return out


def forked_worker_main(env: dict[str, str], opts: WorkerOptions, log_path: str) -> None:
    """Entry point of a worker started by the supervisor's fork server: the modules are
    already imported there, so start-up costs a fork and two connections."""
    import sys

    from core.settings import load_settings

    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    logging.basicConfig(level=logging.INFO, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = load_settings(environ=env)
    sys.exit(run_async(run_worker_process(settings, opts)))
