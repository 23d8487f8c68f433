"""`jobharness demo`: a few hundred mixed jobs through a few in-process workers, then what
happened: counts per final state and latency percentiles.

Latencies come from PostgreSQL timestamps only (invariant 6): queue wait = first start -
creation, end-to-end = finish - creation.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from dataclasses import replace
from typing import Any

from core.cli.output import EXIT_OK, console, print_json, run_async, settings_from_args
from core.errors import JobHarnessError
from core.jobs.backoff import BackoffPolicy
from core.jobs.model import JobSpec
from core.service.reconciler import Reconciler
from core.service.runtime import open_runtime
from core.settings import Settings
from core.worker.handlers import BUILTIN_HANDLERS
from core.worker.loop import Worker
from loadtests.scratch import scratch_schema

LATENCY_SQL = """
SELECT status, count(*) AS jobs,
       percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (
           ORDER BY extract(epoch FROM started_at - created_at) * 1000) AS wait_ms,
       percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (
           ORDER BY extract(epoch FROM completed_at - created_at) * 1000) AS e2e_ms
FROM jobs GROUP BY status ORDER BY status
"""


def demo_specs(n: int, rng: random.Random) -> list[JobSpec]:
    """A mixed batch: all priorities, sleeps, flaky and always-failing jobs, chains, diamonds,
    and dependents of a job that will die (they end CANCELLED)."""
    specs: list[JobSpec] = []
    doomed = "doomed"
    specs.append(JobSpec(job_type="flaky", payload={"p": 1.0}, max_retries=1, ref=doomed))
    specs.append(JobSpec(job_type="hang", timeout_s=0.5, max_retries=0, priority=2))
    i = 0
    while len(specs) < n:
        i += 1
        kind = rng.random()
        prio = rng.randint(1, 5)
        if kind < 0.55:
            specs.append(JobSpec(job_type="sleep", priority=prio,
                                 payload={"dist": "exp", "mean_ms": 15, "seed": i}))
        elif kind < 0.75:
            specs.append(JobSpec(job_type="flaky", priority=prio, max_retries=3,
                                 payload={"p": 0.3, "seed": i}))
        elif kind < 0.80:
            specs.append(JobSpec(job_type="flaky", priority=prio, max_retries=1,
                                 payload={"p": 1.0}))
        elif kind < 0.90:  # a chain of three
            a, b = f"c{i}a", f"c{i}b"
            specs += [JobSpec(job_type="noop", priority=prio, ref=a),
                      JobSpec(job_type="noop", priority=prio, ref=b, depends_on=(a,)),
                      JobSpec(job_type="noop", priority=prio, depends_on=(b,))]
        elif kind < 0.97:  # a diamond
            top, left, right = f"d{i}t", f"d{i}l", f"d{i}r"
            specs += [JobSpec(job_type="noop", priority=prio, ref=top),
                      JobSpec(job_type="sleep", payload={"ms": 5}, ref=left, depends_on=(top,)),
                      JobSpec(job_type="sleep", payload={"ms": 5}, ref=right, depends_on=(top,)),
                      JobSpec(job_type="noop", priority=prio, depends_on=(left, right))]
        else:
            specs.append(JobSpec(job_type="noop", priority=prio, depends_on=(doomed,)))
    return specs  # may pass n by the last chain or diamond


async def run_demo(
    settings: Settings, *, jobs: int, workers: int, seed: int, console: Any
) -> dict[str, Any]:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    settings = replace(settings, backoff=BackoffPolicy(base_s=0.1, max_s=1.0, jitter_s=0.05),
                       lease_s=5.0)
    rng = random.Random(seed)
    # a clean slate for the demo's schema, kept afterwards to look at
    async with scratch_schema(settings, settings.schema, keep=True) as settings, open_runtime(
            settings, pool_size=workers + 3, redis_connections=workers + 3,
            migrate_first=False) as rt:
        svc = rt.service
        specs = demo_specs(jobs, rng)
        t0 = time.monotonic()
        created = await svc.create_batch(specs)
        queued = next(r for r in created if r.status.value == "PENDING" and r.ref is None)
        await svc.cancel(queued.job_id, "cancelled by the demo")
        stop = asyncio.Event()
        pool = [Worker(svc, f"demo-worker-{k}", BUILTIN_HANDLERS, concurrency=4)
                for k in range(workers)]
        for w in pool:
            await svc.register_worker(w.worker_id, [], concurrency=w.concurrency)
        tasks = [asyncio.create_task(w.run(stop)) for w in pool]
        reconciler = asyncio.create_task(Reconciler(svc).run(stop, interval_s=1.0))
        columns = (TextColumn("{task.description}"), BarColumn(),
                   TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn())
        with Progress(*columns, console=console) as bar:
            task = bar.add_task("jobs finished", total=len(specs))
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                counts = await svc.counts()
                finished = counts["COMPLETED"] + counts["DEAD"] + counts["CANCELLED"]
                bar.update(task, completed=finished)
                if finished == len(specs):
                    break
                await asyncio.sleep(0.2)  # progress refresh cadence, not synchronisation
        stop.set()
        await asyncio.gather(*tasks, reconciler)
        elapsed = time.monotonic() - t0
        for w in pool:
            await svc.deregister_worker(w.worker_id)
        rows = await rt.pool.fetch(LATENCY_SQL)
        executions = await rt.pool.fetchval("SELECT count(*) FROM job_executions")
        dlq = len(await svc.dlq_list(limit=10_000))
    return {
        "jobs": len(specs),
        "workers": workers,
        "elapsed_s": round(elapsed, 2),
        "counts": counts,
        "executions": executions,
        "dead_letter_queue": dlq,
        "stale_results_rejected": svc.stats["stale_rejected"],
        "latency_ms": {
            r["status"]: {
                "jobs": r["jobs"],
                "queue_wait": _pcts(r["wait_ms"]),
                "end_to_end": _pcts(r["e2e_ms"]),
            }
            for r in rows
        },
    }


def _pcts(values: list[float | None] | None) -> dict[str, float | None]:
    vals = list(values or [None, None, None])
    return {k: (round(v, 1) if v is not None else None)
            for k, v in zip(("p50", "p95", "p99"), vals, strict=True)}


def cmd_demo(args: argparse.Namespace) -> int:
    from rich.table import Table

    from core.service.runtime import endpoints
    from loadtests.demo import run_demo

    if not 10 <= args.jobs <= 10_000 or not 1 <= args.workers <= 32:
        raise JobHarnessError("--jobs must be 10..10000 and --workers 1..32")
    # The demo wipes its schema and key prefix first, so it never uses the configured ones
    # unless they are given explicitly on its command line.
    args.schema, args.prefix = args.schema or "demo", args.prefix or "demo"
    settings = settings_from_args(args)
    err = console(True)
    with endpoints(settings) as resolved:
        result = run_async(run_demo(resolved, jobs=args.jobs, workers=args.workers,
                                      seed=args.seed, console=err))
    if args.json:
        print_json(result)
        return EXIT_OK
    out = console()
    out.print(f"[bold]{result['jobs']} jobs, {result['workers']} workers, "
              f"{result['elapsed_s']} s, {result['executions']} executions[/bold]")
    table = Table("final state", "jobs", "queue wait p50/p95/p99", "end-to-end p50/p95/p99",
                  title="latency in ms (PostgreSQL clock)")
    for status, n in result["counts"].items():
        if not n:
            continue
        lat = result["latency_ms"].get(status, {})
        cells = ["/".join("-" if v is None else f"{v:.0f}" for v in lat.get(k, {}).values())
                 for k in ("queue_wait", "end_to_end")]
        table.add_row(status, str(n), *cells)
    out.print(table)
    out.print(f"dead-letter queue: {result['dead_letter_queue']}   "
              f"stale results rejected: {result['stale_results_rejected']}")
    return EXIT_OK



def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("demo", parents=[common], help="mixed jobs through a few workers")
    p.add_argument("--jobs", type=int, default=300)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--seed", type=int, default=7)
    p.set_defaults(func=cmd_demo)

