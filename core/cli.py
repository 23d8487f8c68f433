"""The `jobharness` command: one script, subcommands per area.

`main(argv) -> int` is testable without a subprocess. Results go to stdout (`--json` for
scripts), progress to stderr; errors print one line unless `--debug`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from core.errors import JobHarnessError
from core.settings import ENV_HELP, Settings, load_settings

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    return Console(stderr=stderr)


def run_async(coro: Any) -> Any:
    """Run a coroutine on uvloop when available (faster asyncpg and redis I/O)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def _settings(args: argparse.Namespace) -> Settings:
    flags = {
        "pg_dsn": args.pg_dsn,
        "redis_url": args.redis_url,
        "schema": args.schema,
        "prefix": args.prefix,
        "data_dir": Path(args.data_dir) if args.data_dir else None,
        "qdrant_url": getattr(args, "qdrant_url", None),
    }
    return load_settings(flags, target=Path(args.target) if args.target else None)


# -- services -------------------------------------------------------------------------------
def cmd_services(args: argparse.Namespace) -> int:
    from core.connect import embedded_services

    services = embedded_services(_settings(args))
    if args.action == "up":
        started = services.up()
    elif args.action == "down":
        started = {k: False for k in services.down()}
    else:
        started = {}
    rows = services.describe()
    for row in rows:
        row["started_now"] = started.get(str(row["name"]), False)
    if args.json:
        _print_json(rows)
    else:
        for row in rows:
            state = "running" if row["running"] else "stopped"
            print(f"{row['name']:<9} {state:<8} pid={row['pid'] or '-':<8} {row['url'] or '-'}")
    if args.action == "status":
        return EXIT_OK if all(r["running"] for r in rows) else EXIT_FAIL
    return EXIT_OK


# -- db -------------------------------------------------------------------------------------
async def _db(args: argparse.Namespace, settings: Settings) -> int:
    from core import migrate
    from core.connect import connect_admin

    conn = await connect_admin(settings)
    try:
        if args.action == "migrate":
            done = await migrate.migrate(conn, settings.schema, to=args.to)
            out: Any = {"schema": settings.schema, "applied": done}
            text = f"applied {done or 'nothing (up to date)'} in schema {settings.schema}"
        elif args.action == "rollback":
            done = await migrate.rollback(conn, settings.schema, to=args.to or 0)
            out = {"schema": settings.schema, "reverted": done}
            text = f"reverted {done or 'nothing'} in schema {settings.schema}"
        elif args.action == "status":
            states = await migrate.status(conn, settings.schema)
            out = [{"version": s.version, "name": s.name, "applied_at": s.applied_at}
                   for s in states]
            text = "\n".join(f"{s.version:03d} {s.name:<40} {s.applied_at or 'pending'}"
                             for s in states)
        else:
            report = await migrate.verify(conn, settings.schema)
            out = {"schema": settings.schema, **report.counts(), "missing": report.missing,
                   "ok": report.ok}
            c = report.counts()
            text = (f"schema {settings.schema}: {c['tables']} tables, {c['indexes']} indexes, "
                    f"{c['functions']} functions, {c['triggers']} trigger(s)")
            text += "" if report.ok else "\nmissing: " + "; ".join(report.missing)
            _print_json(out) if args.json else print(text)
            return EXIT_OK if report.ok else EXIT_FAIL
    finally:
        await conn.close()
    _print_json(out) if args.json else print(text)
    return EXIT_OK


def cmd_db(args: argparse.Namespace) -> int:
    from core.runtime import endpoints

    if args.to is not None and args.action not in ("migrate", "rollback"):
        raise JobHarnessError("--to applies to migrate and rollback only")
    with endpoints(_settings(args)) as settings:
        return int(run_async(_db(args, settings)))


# -- bench ----------------------------------------------------------------------------------
def _bench_limits(args: argparse.Namespace, settings: Settings) -> dict[str, Any] | None:
    """`limits` itself, or measured first in the same run for another suite's `--limits`."""
    if not (args.suite == "limits" or (args.suite in ("core", "e2e", "batch", "api")
                                       and args.limits)):
        return None
    from core.bench_limits import LimitsError, bench_limits

    # e2e: the stores' ceiling is taken at the clients the worker fleet has, up to 8 (two
    # cores saturate well before); every other suite at its own concurrency
    clients = (min(args.workers * args.concurrency, 8) if args.suite == "e2e"
               else args.concurrency)
    try:
        return dict(run_async(bench_limits(settings, ops=args.ops, concurrency=clients)))
    except LimitsError as exc:
        raise JobHarnessError(str(exc)) from exc


def _bench_suite(args: argparse.Namespace, settings: Settings, progress: Any,
                 limits: dict[str, Any] | None) -> dict[str, Any]:
    """Run the suite; with `limits`, each result gains its share of the matching limit."""
    from core.bench import bench_batch, bench_core, with_limits
    from core.bench_procs import bench_api, bench_e2e, bench_supervisor, e2e_with_limits

    if args.suite == "limits" and limits is not None:
        return limits
    if args.suite == "supervisor":
        return dict(run_async(bench_supervisor(settings, workers=args.workers,
                                               kills=args.kills, progress=progress)))
    result: dict[str, Any]
    if args.suite == "core":
        result = run_async(bench_core(
            settings, ops=args.ops, concurrency=args.concurrency, seed=args.seed,
            progress=progress, memory=args.memory, rate=args.rate))
    elif args.suite == "batch":
        result = run_async(bench_batch(settings, jobs=args.ops, batch_size=args.batch_size,
                                       concurrency=args.concurrency, progress=progress))
    elif args.suite == "e2e":
        result = run_async(bench_e2e(settings, jobs=args.ops, workers=args.workers,
                                     concurrency=args.concurrency,
                                     worker_nice=args.worker_nice, progress=progress))
    else:
        result = run_async(bench_api(settings, requests=args.ops,
                                     concurrency=args.concurrency, processes=args.processes,
                                     progress=progress))
    if limits is None:
        return result
    return (e2e_with_limits if args.suite == "e2e" else with_limits)(result, limits)


def cmd_bench(args: argparse.Namespace) -> int:
    from rich.progress import Progress

    from core.runtime import endpoints

    if args.ops < 1 or args.concurrency < 1 or args.workers < 1 or args.kills < 0:
        raise JobHarnessError("--ops, --concurrency and --workers must be >= 1, --kills >= 0")
    if not 1 <= args.batch_size <= 10_000:
        raise JobHarnessError("--batch-size must be 1..10000 (the core's batch limit)")
    if not 0 <= args.worker_nice <= 19:
        raise JobHarnessError("--worker-nice must be 0..19")
    if not 1 <= args.processes <= 16:
        raise JobHarnessError("--processes must be 1..16")
    if args.rate is not None and not (1 <= args.rate <= 100_000 and args.suite == "core"):
        raise JobHarnessError("--rate applies to `bench core` and must be 1..100000 ops/s")
    with endpoints(_settings(args)) as settings, Progress(console=_console(True)) as bar:
        tasks: dict[str, Any] = {}

        def progress(name: str, done: int, total: int) -> None:
            if name not in tasks:
                tasks[name] = bar.add_task(name, total=total)
            bar.update(tasks[name], completed=done)

        limits = _bench_limits(args, settings)
        result = _bench_suite(args, settings, progress, limits)
    if args.json or args.suite != "core" or args.memory.startswith("compare") or args.limits:
        _print_json(result)
    else:
        if args.rate is not None:
            print(f"open loop, {args.rate:g} operations/s offered")
        print(f"{'op':<10}{'ops/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'p99.9 ms':>10}")
        for name, r in result["operations"].items():
            print(f"{name:<10}{r['throughput_ops_s']:>10}{r['p50_ms']:>10.3f}"
                  f"{r['p99_ms']:>10.3f}{r['p999_ms']:>10.3f}")
    return EXIT_OK


# -- demo -----------------------------------------------------------------------------------
def cmd_demo(args: argparse.Namespace) -> int:
    from rich.table import Table

    from core.demo import run_demo
    from core.runtime import endpoints

    if not 10 <= args.jobs <= 10_000 or not 1 <= args.workers <= 32:
        raise JobHarnessError("--jobs must be 10..10000 and --workers 1..32")
    # The demo wipes its schema and key prefix first, so it never uses the configured ones
    # unless they are given explicitly on its command line.
    args.schema, args.prefix = args.schema or "demo", args.prefix or "demo"
    settings = _settings(args)
    err = _console(True)
    with endpoints(settings) as resolved:
        result = run_async(run_demo(resolved, jobs=args.jobs, workers=args.workers,
                                      seed=args.seed, console=err))
    if args.json:
        _print_json(result)
        return EXIT_OK
    out = _console()
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


# -- reconcile, dlq -------------------------------------------------------------------------
async def _ops(args: argparse.Namespace, settings: Settings) -> Any:
    from core.reconciler import Reconciler
    from core.runtime import open_runtime

    async with open_runtime(settings) as rt:
        if args.command == "reconcile":
            return (await Reconciler(rt.service).run_once()).as_dict()
        if args.action == "list":
            return await rt.service.dlq_list(job_type=args.job_type, limit=args.limit)
        if args.action == "requeue":
            for job_id in args.job_ids:
                await rt.service.dlq_requeue(job_id)
            return {"requeued": args.job_ids}
        older = 0.0 if args.all else args.older_than_days * 86_400 if args.older_than_days \
            is not None else None
        return {"purged": await rt.service.dlq_purge(older_than_s=older)}


def cmd_ops(args: argparse.Namespace) -> int:
    from core.runtime import endpoints

    with endpoints(_settings(args)) as settings:
        _print_json(run_async(_ops(args, settings)))
    return EXIT_OK


# -- parser ---------------------------------------------------------------------------------
Extension = Callable[[Any, argparse.ArgumentParser], None]


def build_parser(extend: Extension | None = None) -> argparse.ArgumentParser:
    env = ", ".join(f"{v}" for v in ENV_HELP.values())
    parser = argparse.ArgumentParser(
        prog="jobharness",
        description="Load-testing and chaos harness for PostgreSQL + Redis job systems.",
        epilog=f"Settings come from flags > environment ({env}) > --target file > defaults. "
        "With no endpoints configured, the embedded servers are started (and reused).",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--target", help="YAML target file (env JOBHARNESS_TARGET)")
    common.add_argument("--pg-dsn", help="PostgreSQL DSN (env JOBHARNESS_PG_DSN)")
    common.add_argument("--redis-url", help="Redis URL (env JOBHARNESS_REDIS_URL)")
    common.add_argument("--schema", help="PostgreSQL schema (env JOBHARNESS_SCHEMA, gap006)")
    common.add_argument("--prefix", help="Redis key prefix (env JOBHARNESS_PREFIX, gap006)")
    common.add_argument("--data-dir", help="embedded servers' folder (env JOBHARNESS_DATA_DIR)")
    common.add_argument("--qdrant-url", help="Qdrant server (env JOBHARNESS_QDRANT_URL); "
                        "default: local mode in DATA_DIR/qdrant")
    common.add_argument("--json", action="store_true", help="print JSON for scripts")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("services", parents=[common], help="embedded PostgreSQL and Valkey")
    p.add_argument("action", choices=["up", "down", "status"])
    p.set_defaults(func=cmd_services)

    p = sub.add_parser("db", parents=[common], help="schema migrations")
    p.add_argument("action", choices=["migrate", "rollback", "status", "verify"])
    p.add_argument("--to", type=int, help="target version (migrate: up to, rollback: down to)")
    p.set_defaults(func=cmd_db)

    p = sub.add_parser("bench", parents=[common], help="benchmarks")
    p.add_argument("suite", choices=["core", "limits", "batch", "e2e", "supervisor", "api"])
    p.add_argument("--ops", type=int, default=5000,
                   help="core: operations per phase; api: requests; batch, e2e: jobs (5000)")
    p.add_argument("--batch-size", type=int, default=1000,
                   help="batch: jobs per create_batch call (1000)")
    p.add_argument("--concurrency", type=int, default=8, help="concurrent clients (8)")
    p.add_argument("--workers", type=int, default=100,
                   help="supervisor, e2e: worker processes (100)")
    p.add_argument("--kills", type=int, default=5, help="supervisor: kill/replace rounds (5)")
    p.add_argument("--memory", choices=["off", "on", "compare", "compare-emit"],
                   default="off",
                   help="core: state-memory events off, on, or both in alternating rounds "
                   "with a memory owner (compare) or without one (compare-emit)")
    p.add_argument("--worker-nice", type=int, default=0,
                   help="e2e: workers' niceness above this process's, 0..19 (0)")
    p.add_argument("--processes", type=int, default=1,
                   help="api: API processes, each on its own port (1)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--rate", type=float, default=None,
                   help="core: open loop at this many operations per second offered "
                   "(latency counted from when each was due); default closed loop")
    p.add_argument("--limits", action="store_true",
                   help="core, batch, e2e, api: measure `limits` in the same run and give "
                   "the ratio")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("demo", parents=[common], help="mixed jobs through a few workers")
    p.add_argument("--jobs", type=int, default=300)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--seed", type=int, default=7)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("reconcile", parents=[common], help="one reconciler pass")
    p.set_defaults(func=cmd_ops)

    p = sub.add_parser("dlq", parents=[common], help="dead-letter queue")
    dlq = p.add_subparsers(dest="action", required=True)
    d = dlq.add_parser("list", parents=[common])
    d.add_argument("--job-type")
    d.add_argument("--limit", type=int, default=100)
    d = dlq.add_parser("requeue", parents=[common])
    d.add_argument("job_ids", nargs="+")
    d = dlq.add_parser("purge", parents=[common])
    g = d.add_mutually_exclusive_group()
    g.add_argument("--older-than-days", type=float, help="default: the retention (30 days)")
    g.add_argument("--all", action="store_true")
    p.set_defaults(func=cmd_ops)

    from core import opscli, proccli, statecli

    proccli.add_parsers(sub, common)
    opscli.add_parsers(sub, common)
    statecli.add_parsers(sub, common)
    if extend is not None:  # the harness adds its commands (run, chaos, report, ...)
        extend(sub, common)
    return parser


def main(argv: Sequence[str] | None = None, *, extend: Extension | None = None) -> int:
    parser = build_parser(extend)
    args = parser.parse_args(argv)
    try:
        if getattr(args, "needs_settings", False):
            return int(args.func(args, _settings(args)))
        return int(args.func(args))
    except BrokenPipeError:  # output piped into `head` and the like
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (left open until exit)
        return EXIT_OK
    except (JobHarnessError, OSError) as exc:
        if args.debug:
            raise
        chain: list[str] = []
        cur: BaseException | None = exc
        while cur is not None and len(chain) < 4:
            chain.append(f"{type(cur).__name__}: {cur}")
            cur = cur.__cause__
        print("error: " + " <- ".join(chain), file=sys.stderr)
        return EXIT_FAIL
    except KeyboardInterrupt:
        return 130



if __name__ == "__main__":
    sys.exit(main())
