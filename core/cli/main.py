"""The `jobharness` command: one script, subcommands per area.

`main(argv) -> int` is testable without a subprocess. Results go to stdout (`--json` for
scripts), progress to stderr; errors print one line unless `--debug`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from core.cli.output import EXIT_FAIL, EXIT_OK, print_json, run_async, settings_from_args
from core.errors import JobHarnessError
from core.settings import ENV_HELP, Settings, split_password


# -- services -------------------------------------------------------------------------------
def cmd_services(args: argparse.Namespace) -> int:
    from core.service.runtime import embedded_services

    services = embedded_services(settings_from_args(args))
    if args.action == "up":
        started = services.up()
    elif args.action == "down":
        started = {k: False for k in services.down()}
    else:
        started = {}
    rows = services.describe()
    for row in rows:
        row["started_now"] = started.get(str(row["name"]), False)
        row["url"] = without_password(row["url"])  # the password stays in secrets.json
    if args.json:
        print_json(rows)
    else:
        for row in rows:
            state = "running" if row["running"] else "stopped"
            print(f"{row['name']:<9} {state:<8} pid={row['pid'] or '-':<8} {row['url'] or '-'}")
    if args.action == "status":
        return EXIT_OK if all(r["running"] for r in rows) else EXIT_FAIL
    return EXIT_OK


def without_password(url: object) -> object:
    """A store URL as printed: its password replaced by `***`."""
    if not isinstance(url, str):
        return url
    stripped, password = split_password(url)
    return url if password is None else stripped.replace("@", ":***@", 1)


# -- db -------------------------------------------------------------------------------------
async def _db(args: argparse.Namespace, settings: Settings) -> int:
    from core.store import migrate
    from core.store.pools import connect_admin

    conn = await connect_admin(settings)
    try:
        if args.action == "migrate":
            done = await migrate.migrate(conn, settings.schema, to=args.to)
            out: Any = {"schema": settings.schema, "applied": done}
            text = f"applied {done or 'nothing (up to date)'} in schema {settings.schema}"
        elif args.action == "rollback":
            applied = [st.version for st in await migrate.status(conn, settings.schema)
                       if st.applied_at is not None]
            to = args.to if args.to is not None else max(0, max(applied, default=0) - 1)
            if to == 0 and applied and not args.yes:
                raise JobHarnessError(f"rollback to 0 drops every table of schema "
                                      f"{settings.schema} and the jobs in them; give --yes")
            done = await migrate.rollback(conn, settings.schema, to=to)
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
            print_json(out) if args.json else print(text)
            return EXIT_OK if report.ok else EXIT_FAIL
    finally:
        await conn.close()
    print_json(out) if args.json else print(text)
    return EXIT_OK


def cmd_db(args: argparse.Namespace) -> int:
    from core.service.runtime import endpoints

    if args.to is not None and args.action not in ("migrate", "rollback"):
        raise JobHarnessError("--to applies to migrate and rollback only")
    with endpoints(settings_from_args(args)) as settings:
        return int(run_async(_db(args, settings)))


# -- reconcile, dlq -------------------------------------------------------------------------
async def _ops(args: argparse.Namespace, settings: Settings) -> Any:
    from core.service.reconciler import Reconciler
    from core.service.runtime import open_runtime

    async with open_runtime(settings) as rt:
        if args.command == "reconcile":
            return (await Reconciler(rt.service).run_full()).as_dict()
        if args.action == "list":
            return await rt.service.dlq_list(job_type=args.job_type, limit=args.limit)
        if args.action == "requeue":
            for job_id in args.job_ids:
                await rt.service.dlq_requeue(job_id)
            return {"requeued": args.job_ids}
        older = 0.0 if args.all else float(args.older_than_days) * 86_400
        return {"purged": await rt.service.dlq_purge(older_than_s=older)}


def cmd_ops(args: argparse.Namespace) -> int:
    from core.service.runtime import endpoints

    if getattr(args, "action", None) == "purge" and args.all and not args.yes:
        raise JobHarnessError("dlq purge --all deletes every entry for good (they cannot be "
                              "requeued afterwards); give --yes")
    with endpoints(settings_from_args(args)) as settings:
        print_json(run_async(_ops(args, settings)))
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
    p.add_argument("--to", type=int, help="target version (migrate: up to; rollback: down to, "
                   "default one version back)")
    p.add_argument("--yes", action="store_true",
                   help="rollback --to 0: yes, drop the whole schema")
    p.set_defaults(func=cmd_db)

    p = sub.add_parser("reconcile", parents=[common], help="one reconciler pass")
    p.set_defaults(func=cmd_ops)

    p = sub.add_parser("dlq", parents=[common], help="dead-letter queue")
    dlq = p.add_subparsers(dest="action", required=True)
    d = dlq.add_parser("list", parents=[common])
    d.add_argument("--job-type")
    d.add_argument("--limit", type=int, default=100)
    d = dlq.add_parser("requeue", parents=[common])
    d.add_argument("job_ids", nargs="+")
    d = dlq.add_parser("purge", parents=[common],
                       help="delete entries for good (they cannot be requeued afterwards)")
    g = d.add_mutually_exclusive_group(required=True)
    g.add_argument("--older-than-days", type=float, help="entries failed more than D days ago")
    g.add_argument("--all", action="store_true", help="every entry (needs --yes)")
    d.add_argument("--yes", action="store_true", help="--all: yes, delete every entry")
    p.set_defaults(func=cmd_ops)

    from core.cli import ops as opscli
    from core.cli import procs as proccli
    from core.cli import state as statecli

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
            return int(args.func(args, settings_from_args(args)))
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
