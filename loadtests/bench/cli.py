"""`jobharness bench SUITE`: the benchmark commands (docs/performance.md)."""

from __future__ import annotations

import argparse
from typing import Any

from core.cli.output import EXIT_OK, console, print_json, run_async, settings_from_args
from core.errors import JobHarnessError
from core.settings import Settings, check_nice


def _bench_limits(args: argparse.Namespace, settings: Settings) -> dict[str, Any] | None:
    """`limits` itself, or measured first in the same run for another suite's `--limits`."""
    if not (args.suite == "limits" or (args.suite in ("core", "e2e", "batch", "api")
                                       and args.limits)):
        return None
    from loadtests.bench.limits import LimitsError, bench_limits

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
    from loadtests.bench.core import bench_batch, bench_core, with_limits
    from loadtests.bench.procs import bench_api, bench_e2e, bench_supervisor, e2e_with_limits

    if args.suite == "limits" and limits is not None:
        return limits
    if args.suite == "supervisor":
        return dict(run_async(bench_supervisor(settings, workers=args.workers,
                                               kills=args.kills, progress=progress)))
    if args.suite == "dispatch":
        from loadtests.bench.dispatch import bench_dispatch

        return dict(run_async(bench_dispatch(
            settings, tenants=args.tenants, jobs=args.ops, acquires=args.acquires,
            concurrency=args.concurrency, rounds=args.rounds, progress=progress)))
    if args.suite == "proxy":
        from loadtests.bench.proxy import bench_proxy

        return dict(run_async(bench_proxy(settings, ops=args.ops, progress=progress)))
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

    from core.service.runtime import endpoints

    if args.ops < 1 or args.concurrency < 1 or args.workers < 1 or args.kills < 0:
        raise JobHarnessError("--ops, --concurrency and --workers must be >= 1, --kills >= 0")
    if not 1 <= args.batch_size <= 10_000:
        raise JobHarnessError("--batch-size must be 1..10000 (the core's batch limit)")
    try:
        check_nice(args.worker_nice, "--worker-nice")
    except ValueError as exc:
        raise JobHarnessError(str(exc)) from exc
    if not 1 <= args.processes <= 16:
        raise JobHarnessError("--processes must be 1..16")
    if not (1 <= args.acquires <= 100_000 and 1 <= args.rounds <= 10):
        raise JobHarnessError("--acquires must be 1..100000 and --rounds 1..10")
    if args.rate is not None and not (1 <= args.rate <= 100_000 and args.suite == "core"):
        raise JobHarnessError("--rate applies to `bench core` and must be 1..100000 ops/s")
    with endpoints(settings_from_args(args)) as settings, Progress(console=console(True)) as bar:
        tasks: dict[str, Any] = {}

        def progress(name: str, done: int, total: int) -> None:
            if name not in tasks:
                tasks[name] = bar.add_task(name, total=total)
            bar.update(tasks[name], completed=done)

        limits = _bench_limits(args, settings)
        result = _bench_suite(args, settings, progress, limits)
    if args.json or args.suite != "core" or args.memory.startswith("compare") or args.limits:
        print_json(result)
    else:
        if args.rate is not None:
            print(f"open loop, {args.rate:g} operations/s offered")
        print(f"{'op':<10}{'ops/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'p99.9 ms':>10}")
        for name, r in result["operations"].items():
            print(f"{name:<10}{r['throughput_ops_s']:>10}{r['p50_ms']:>10.3f}"
                  f"{r['p99_ms']:>10.3f}{r['p999_ms']:>10.3f}")
    return EXIT_OK



def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("bench", parents=[common], help="benchmarks")
    p.add_argument("suite", choices=["core", "limits", "batch", "e2e", "supervisor", "api",
                                     "proxy", "dispatch"])
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
    p.add_argument("--tenants", type=_tenant_counts, default=[1, 100, 10_000, 100_000],
                   help="dispatch: tenant counts, comma-separated, the first the baseline "
                   "(1,100,10000,100000); the jobs are at least the largest count")
    p.add_argument("--acquires", type=int, default=1000,
                   help="dispatch: single acquisitions timed per row (1000)")
    p.add_argument("--rounds", type=int, default=1,
                   help="dispatch: interleaved rounds, medians reported (1)")
    p.set_defaults(func=cmd_bench)


def _tenant_counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--tenants: {text!r} is not a list of whole "
                                         "numbers") from None
    if not counts or not all(1 <= c <= 1_000_000 for c in counts):
        raise argparse.ArgumentTypeError("--tenants: each count must be 1..1000000")
    return counts

