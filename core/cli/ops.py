"""The operator CLI, the seed's "operational access" done properly: jobs, queues, workers and
the dead-letter queue. Human tables by default, `--json` for scripts."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import sys
from collections.abc import Sequence
from typing import Any

from core.contract.keys import Keys
from core.errors import InvalidInput, JobHarnessError
from core.jobs.model import JobSpec
from core.settings import Settings


def _table(rows: Sequence[dict[str, Any]], columns: Sequence[str], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(*columns, title=title)
    for row in rows:
        table.add_row(*("" if row.get(c) is None else str(row.get(c)) for c in columns))
    Console().print(table)


def _spec(args: argparse.Namespace) -> JobSpec:
    try:
        payload = json.loads(args.payload) if args.payload else {}
    except ValueError as exc:
        raise InvalidInput("payload", f"malformed JSON: {exc}") from exc
    return JobSpec(job_type=args.type, payload=payload, priority=args.priority,
                   max_retries=args.max_retries, timeout_s=args.timeout_s,
                   delay_s=args.delay_s, required_capability=args.capability,
                   idempotency_key=args.idempotency_key, depends_on=tuple(args.depends_on or ()),
                   tenant=args.tenant)


async def _jobs(args: argparse.Namespace, settings: Settings) -> Any:
    from core.service.runtime import open_runtime

    async with open_runtime(settings) as rt:
        svc = rt.service
        if args.action == "create":
            spec = _spec(args)
            if args.count < 1 or args.count > 10_000:
                raise InvalidInput("count", "must be between 1 and 10000")
            results = await svc.create_batch([spec] * args.count)
            return [dataclasses.asdict(r) for r in results]
        if args.action == "get":
            job = await svc.get(args.job_id)
            return {**dataclasses.asdict(job), "executions": await svc.executions(args.job_id)}
        if args.action == "list":
            return await svc.list_jobs(status=args.status, job_type=args.type,
                                       limit=args.limit, offset=args.offset)
        if args.action == "cancel":
            return {"id": args.job_id, "status": await svc.cancel(args.job_id, args.reason)}
        if args.status is not None:
            await svc.list_jobs(status=args.status, limit=1)  # validates the status
        from core.store.queries import q

        return [dict(r) for r in await rt.pool.fetch(q("export_jobs"), args.status)]


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value: Any) -> Any:
    """A text cell a spreadsheet would run as a formula (`=HYPERLINK(...)`, `+`, `-`, `@`)
    gets a leading quote, as OWASP's CSV-injection advice says; numbers stay numbers."""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def cmd_jobs(args: argparse.Namespace, settings: Settings) -> int:
    from core.cli.output import print_json, run_async
    from core.service.runtime import endpoints

    if args.action == "export" and not args.csv and not args.json:
        raise JobHarnessError("export needs --csv or --json")
    with endpoints(settings) as resolved:
        out = run_async(_jobs(args, resolved))
    if args.action == "export" and args.csv:
        writer = csv.DictWriter(sys.stdout, fieldnames=list(out[0]) if out else ["id"])
        writer.writeheader()
        writer.writerows({k: spreadsheet_safe(v) for k, v in row.items()} for row in out)
    elif args.json or args.action == "get":
        print_json(out)
    elif args.action in ("list", "create"):
        cols = (["id", "job_type", "status", "priority", "retry_count", "worker_id"]
                if args.action == "list" else ["job_id", "status", "created"])
        _table(out, cols, f"{len(out)} job(s)")
    else:
        print(f"{out['id']}: {out['status']}")
    return 0


async def _queues_workers(args: argparse.Namespace, settings: Settings) -> Any:
    from core.errors import DispatchUnavailable
    from core.service.runtime import open_runtime

    async with open_runtime(settings) as rt:
        if args.command == "workers":
            return await rt.service.list_workers(status=args.status, limit=args.limit)
        try:
            depths: dict[str, int] | None = await rt.dispatch.depths()
        except DispatchUnavailable:
            depths = None
        return {"redis": depths, "postgres": await rt.service.counts()}


def cmd_queues_workers(args: argparse.Namespace, settings: Settings) -> int:
    from core.cli.output import print_json, run_async
    from core.service.runtime import endpoints

    with endpoints(settings) as resolved:
        out = run_async(_queues_workers(args, resolved))
    if args.json:
        print_json(out)
    elif args.command == "workers":
        for row in out:
            row["heartbeat_age_s"] = f"{row['heartbeat_age_s']:.1f}"
        _table(out, ["id", "status", "in_flight", "jobs_completed", "jobs_failed",
                     "heartbeat_age_s"], f"{len(out)} worker(s)")
    else:
        queues = Keys(settings.prefix).queues
        rows = [{"queue": queues[name], "depth": n} for name, n in (out["redis"] or {}).items()]
        if out["redis"] is None:
            rows = [{"queue": "redis", "depth": "unreachable"}]
        _table(rows, ["queue", "depth"], "Redis queues")
        _table([{"status": k, "jobs": v} for k, v in out["postgres"].items()],
               ["status", "jobs"], "PostgreSQL jobs by status")
    return 0


async def _limits(args: argparse.Namespace, settings: Settings) -> Any:
    from core.jobs.limits import Limit
    from core.service import limits
    from core.service.runtime import open_runtime

    async with open_runtime(settings) as rt:
        if args.action == "set":
            limit, enforced = await limits.set_limit(
                rt.pool, rt.dispatch,
                Limit(scope=args.scope, name=args.name, max_running=args.max_running,
                             rate_per_s=args.rate, burst=args.burst, weight=args.weight),
                settings.job_types)
            return {"limit": limit.as_dict(), "enforced": enforced}
        if args.action == "clear":
            found, enforced = await limits.clear_limit(rt.pool, rt.dispatch, args.scope,
                                                       args.name)
            if not found:
                raise InvalidInput("name", f"no limits set for {args.scope} {args.name!r}")
            return {"cleared": {"scope": args.scope, "name": args.name}, "enforced": enforced}
        out: list[dict[str, Any]] = []
        while True:  # every limit, a page at a time
            page = await limits.limit_states(
                rt.pool, rt.dispatch,
                after=(out[-1]["scope"], out[-1]["name"]) if out else ("", ""))
            out += page
            if len(page) < limits.PAGE:
                return out


def cmd_limits(args: argparse.Namespace, settings: Settings) -> int:
    from core.cli.output import print_json, run_async
    from core.service.runtime import endpoints

    with endpoints(settings) as resolved:
        out = run_async(_limits(args, resolved))
    if args.json:
        print_json(out)
    elif args.action == "list":
        _table(out, ["scope", "name", "max_running", "rate_per_s", "burst", "weight",
                     "running", "waits", "enforced"], f"{len(out)} limit(s)")
    elif args.action == "set":
        lim = out["limit"]
        print(f"{lim['scope']} {lim['name']}: max_running={lim['max_running']} "
              f"rate_per_s={lim['rate_per_s']} burst={lim['burst']} weight={lim['weight']}"
              + ("" if out["enforced"] else " (Redis unreachable: enforced once the "
                 "reconciler mirrors it)"))
    else:
        print(f"{args.scope} {args.name}: limits cleared")
    return 0


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("jobs", parents=[common], help="create, inspect, cancel, export jobs")
    jobs = p.add_subparsers(dest="action", required=True)
    c = jobs.add_parser("create", parents=[common])
    c.add_argument("--type", required=True)
    c.add_argument("--payload", help="JSON object")
    c.add_argument("--priority", type=int, default=3)
    c.add_argument("--max-retries", type=int, default=5)
    c.add_argument("--timeout-s", type=float, default=300.0)
    c.add_argument("--delay-s", type=float, default=0.0)
    c.add_argument("--capability")
    c.add_argument("--idempotency-key")
    c.add_argument("--depends-on", nargs="*")
    c.add_argument("--count", type=int, default=1)
    c.add_argument("--tenant", help="who the job belongs to (limits and fair shares)")
    g = jobs.add_parser("get", parents=[common])
    g.add_argument("job_id")
    ls = jobs.add_parser("list", parents=[common])
    ls.add_argument("--status")
    ls.add_argument("--type")
    ls.add_argument("--limit", type=int, default=50)
    ls.add_argument("--offset", type=int, default=0)
    x = jobs.add_parser("cancel", parents=[common])
    x.add_argument("job_id")
    x.add_argument("--reason", default="cancelled by operator")
    e = jobs.add_parser("export", parents=[common])
    e.add_argument("--csv", action="store_true")
    e.add_argument("--status")
    p.set_defaults(func=cmd_jobs, needs_settings=True)

    p = sub.add_parser("queues", parents=[common], help="depth of every queue")
    p.set_defaults(func=cmd_queues_workers, needs_settings=True)
    p = sub.add_parser("limits", parents=[common],
                       help="limits per job type and tenant, and fair-share weights")
    lim = p.add_subparsers(dest="action", required=True)
    lim.add_parser("list", parents=[common], help="every limit and what it governs now")
    s = lim.add_parser("set", parents=[common], help="set (replace) one type's or tenant's "
                       "limits; they apply to the next acquisition")
    s.add_argument("scope", choices=["job_type", "tenant"])
    s.add_argument("name")
    s.add_argument("--max-running", type=int, help="jobs that may run at once")
    s.add_argument("--rate", type=float, help="jobs that may start per second")
    s.add_argument("--burst", type=int, help="starts a rate limit may save up (default: "
                   "one second's worth)")
    s.add_argument("--weight", type=int, help="a tenant's weight in the fair share of a "
                   "priority band (default 1)")
    c = lim.add_parser("clear", parents=[common], help="remove one type's or tenant's limits")
    c.add_argument("scope", choices=["job_type", "tenant"])
    c.add_argument("name")
    p.set_defaults(func=cmd_limits, needs_settings=True)
    p = sub.add_parser("workers", parents=[common], help="workers and their heartbeats")
    p.add_argument("--status")
    p.add_argument("--limit", type=int, default=200)
    p.set_defaults(func=cmd_queues_workers, needs_settings=True)
