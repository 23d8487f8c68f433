"""CLI commands for processes: `worker`, `supervisor` and `ctl` (the supervisor's control
surface). Kept apart from `core.cli.main` so a worker process imports only what it needs."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from core.errors import JobHarnessError
from core.settings import Settings, check_nice
from core.worker.faults import MODES as FAULT_MODES

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _caps(value: str | None) -> tuple[str, ...]:
    return tuple(sorted({c.strip() for c in (value or "").split(",") if c.strip()}))


def check_slots(args: argparse.Namespace) -> None:
    """A worker's --concurrency and --prefetch, or an error naming the bad one."""
    from core.worker.loop import MAX_PREFETCH

    if not 1 <= args.concurrency <= 1000:
        raise JobHarnessError(f"--concurrency must be between 1 and 1000, not {args.concurrency}")
    if not 0 <= args.prefetch <= MAX_PREFETCH:
        raise JobHarnessError(
            f"--prefetch must be between 0 and {MAX_PREFETCH}, not {args.prefetch}")


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from core.cli.output import run_async
    from core.service.runtime import endpoints
    from core.worker.clock import skew_from_env
    from core.worker.process import WorkerOptions, parse_handlers, run_worker_process

    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    check_slots(args)
    try:
        check_nice(args.nice, "--nice")
    except ValueError as exc:
        raise JobHarnessError(str(exc)) from exc
    try:
        handlers = parse_handlers(args.handler or [])
    except ValueError as exc:
        raise JobHarnessError(str(exc)) from exc
    try:
        skew = skew_from_env(os.environ)
    except ValueError as exc:
        raise JobHarnessError(str(exc)) from exc
    opts = WorkerOptions(
        worker_id=args.id or f"worker-{os.getpid()}", capabilities=_caps(args.capabilities),
        concurrency=args.concurrency, prefetch=args.prefetch, handlers=handlers,
        drain_timeout_s=args.drain_timeout_s,
        supervisor=args.supervisor, nice=args.nice, clock_skew_s=skew,
    )
    with endpoints(settings, keep_running=True) as resolved:
        return int(run_async(run_worker_process(resolved, opts)))


def load_predictor(args: argparse.Namespace, settings: Settings) -> Any:
    """The worker-health model for proactive replacement, or None (reactive only). A model
    that cannot be used is refused with the reason logged; the supervisor still runs."""
    if not args.model or args.model == "off":
        return None
    import importlib

    serve = importlib.import_module("predictor.serve")  # the model stack, only when asked
    try:
        return serve.LivePredictor.from_path(
            args.model, threshold=args.threshold, k=args.k, holdout=args.holdout,
            log_path=Path(args.verdict_log) if args.verdict_log else None,
            sample_interval_s=settings.health_sample_s)
    except (serve.ModelError, ValueError) as exc:
        logging.getLogger("jobharness.supervisor").error(
            "predictor refused, running reactive-only: %s", exc)
        return None


def _storm(args: argparse.Namespace) -> Any:
    """Proactive replacement's guards from the flags (ValueError naming a bad one)."""
    from core.supervisor.storm import StormLimits

    per_hour = args.proactive_per_hour
    return StormLimits(per_hour=max(4, args.workers) if per_hour is None else per_hour,
                       horizon_s=args.breaker_horizon_s)


async def _supervise(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    from core.infra.serving import bind, serving, stop_on_signals
    from core.service.runtime import open_runtime
    from core.supervisor.control import control_app, state_file
    from core.supervisor.groups import GROUPS_ENV, parse_groups
    from core.supervisor.supervisor import Supervisor, SupervisorOptions
    from core.worker.process import parse_handlers

    opts = SupervisorOptions(
        workers=args.workers, name=args.name, capabilities=_caps(args.capabilities),
        concurrency=args.concurrency, prefetch=args.prefetch,
        handlers=parse_handlers(args.handler or []),
        check_interval_s=args.check_interval_s, max_replacements=args.max_replacements,
        replacement_window_s=args.replacement_window_s, zombie_grace_s=args.zombie_grace_s,
        drain_timeout_s=args.drain_timeout_s,
        reconcile_interval_s=None if args.no_reconcile or not settings.reconcile else 2.0,
        spawn=args.spawn, worker_nice=args.worker_nice,
        storm=_storm(args), groups=parse_groups(os.environ.get(GROUPS_ENV)),
    )
    predictor = load_predictor(args, settings)
    stop = stop_on_signals()
    async with open_runtime(settings, pool_size=4, redis_connections=4) as rt:
        sup = Supervisor(rt.service, settings, opts, predictor)
        if args.model and predictor is None:
            sup.stats["predictor_refused"] = 1
        sock, url = bind(args.control_host, args.control_port, token=settings.api_token,
                         insecure=args.insecure, surface="the control surface")
        path = state_file(settings.data_dir, opts.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"pid": os.getpid(), "control_url": url,
                                    "workers": opts.workers}))
        logging.getLogger("jobharness.supervisor").info("control surface at %s", url)
        t0 = time.monotonic()
        async with serving(control_app(sup), sock, token=settings.api_token):
            await sup.start()
            if args.duration_s:
                asyncio.get_running_loop().call_later(args.duration_s, stop.set)
            try:
                await sup.run(stop)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        return {"control_url": url, "ran_s": round(time.monotonic() - t0, 1),
                "stats": dict(sup.stats), "replacements": sup.events}


def cmd_supervisor(args: argparse.Namespace, settings: Settings) -> int:
    from core.cli.output import print_json, run_async
    from core.service.runtime import endpoints
    from core.supervisor.groups import GROUPS_ENV, parse_groups

    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    check_slots(args)
    try:
        check_nice(args.worker_nice, "--worker-nice")
        _storm(args)
        parse_groups(os.environ.get(GROUPS_ENV))
    except ValueError as exc:
        raise JobHarnessError(str(exc)) from exc
    with endpoints(settings) as resolved:
        result = run_async(_supervise(args, resolved))
    print_json(result)
    return 0


def cmd_ctl(args: argparse.Namespace, settings: Settings) -> int:
    from core.cli.output import print_json
    from core.supervisor.control import control_request, state_file

    url = args.control_url
    if url is None:
        path = state_file(settings.data_dir, args.name)
        try:
            url = json.loads(path.read_text())["control_url"]
        except (OSError, ValueError, KeyError) as exc:
            raise JobHarnessError(f"no running supervisor {args.name!r} ({path}); "
                                  "give --control-url") from exc
    try:
        if args.action in ("list", "stats"):
            out = control_request(url, "/workers" if args.action == "list" else "/stats",
                                  token=settings.api_token)
        elif args.action == "kill" and not args.worker_ids:
            body = {"count": args.count} if args.count else {"fraction": args.fraction,
                                                              "seed": args.seed}
            out = control_request(url, "/kill", method="POST", body=body,
                                  token=settings.api_token)
        else:
            if not args.worker_ids:
                raise JobHarnessError(f"{args.action} needs worker ids")
            fault = ({"mode": args.mode, "ramp_s": args.ramp_s, "limit_mb": args.limit_mb}
                     if args.action == "degrade" else None)
            out = [control_request(url, f"/workers/{w}/{args.action}", method="POST",
                                   body=fault, token=settings.api_token)
                   for w in args.worker_ids]
    except (LookupError, OSError) as exc:
        raise JobHarnessError(str(exc)) from exc
    print_json(out)
    return 0


def cmd_api(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from core.api.app import create_app
    from core.infra.auth import check_bind
    from core.infra.serving import http_protocol
    from core.service.runtime import endpoints

    check_bind(args.host, settings.api_token, insecure=args.insecure, surface="the API")
    if not 0 < args.header_timeout_s <= 3600:
        raise JobHarnessError("--header-timeout-s must be > 0 and at most 3600")
    with endpoints(settings) as resolved:
        # httptools parses HTTP in C (h11, the fallback, is pure Python and was a third of
        # a create's CPU), with a deadline for a request's headers; no proxy-header
        # rewriting, server or date header per response
        uvicorn.run(create_app(resolved, pool_size=args.pool_size), host=args.host,
                    port=args.port, log_level="warning", loop="uvloop",
                    http=http_protocol(args.header_timeout_s), access_log=False,
                    proxy_headers=False, server_header=False, date_header=False,
                    limit_concurrency=args.max_concurrency, timeout_keep_alive=5)
    return 0


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("api", parents=[common], help="serve the job service's HTTP API")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--insecure", action="store_true",
                   help="listen beyond loopback without JOBHARNESS_API_TOKEN")
    p.add_argument("--pool-size", type=int, default=10, help="PostgreSQL and Redis connections")
    p.add_argument("--max-concurrency", type=int, default=1000,
                   help="connections and requests at once; beyond it 503 (1000)")
    p.add_argument("--header-timeout-s", type=float, default=10.0,
                   help="a request's headers must arrive within this; else 408 and close (10)")
    p.set_defaults(func=cmd_api, needs_settings=True)

    p = sub.add_parser("worker", parents=[common], help="run one worker process")
    p.add_argument("--id", help="worker id (default worker-PID)")
    p.add_argument("--capabilities", help="comma-separated, e.g. gpu,io")
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--prefetch", type=int, default=0,
                   help="jobs a worker leases ahead of its free slots, for short jobs (0)")
    p.add_argument("--handler", action="append", help="type=package.module:function")
    p.add_argument("--drain-timeout-s", type=float, default=10.0)
    p.add_argument("--supervisor", help=argparse.SUPPRESS)
    p.add_argument("--nice", type=int, default=0,
                   help="raise this process's niceness by N (0..19) before it starts")
    p.set_defaults(func=cmd_worker, needs_settings=True)

    p = sub.add_parser("supervisor", parents=[common], help="spawn and watch N workers")
    p.add_argument("--workers", type=int, required=True)
    p.add_argument("--name", default="sup", help="names workers and the control state file")
    p.add_argument("--capabilities")
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--prefetch", type=int, default=0,
                   help="jobs a worker leases ahead of its free slots, for short jobs (0)")
    p.add_argument("--handler", action="append", help="type=package.module:function")
    p.add_argument("--control-host", default="127.0.0.1")
    p.add_argument("--insecure", action="store_true",
                   help="let the control surface listen beyond loopback without a token")
    p.add_argument("--control-port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--check-interval-s", type=float, default=1.0)
    p.add_argument("--max-replacements", type=int, default=20)
    p.add_argument("--replacement-window-s", type=float, default=10.0)
    p.add_argument("--zombie-grace-s", type=float, default=60.0)
    p.add_argument("--drain-timeout-s", type=float, default=10.0)
    p.add_argument("--duration-s", type=float, help="stop by itself after this long")
    p.add_argument("--worker-nice", type=int, default=0,
                   help="workers' niceness above the supervisor's, 0..19 (0); 10 lets the "
                   "API and the stores on the same machine answer first")
    p.add_argument("--spawn", choices=["forkserver", "exec"], default="forkserver",
                   help="forkserver: fork pre-imported workers (fast, shared memory); "
                   "exec: a fresh interpreter per worker")
    p.add_argument("--model", help="worker-health policy: `default` (the shipped one, "
                   "docs/predictor.md), `hand-rule`, `learnt` (the learnt model kept in "
                   "predictor/), a model file, or `off`: replace workers predicted to fail "
                   "before they do")
    p.add_argument("--threshold", type=float, help="failing probability to act on "
                   "(default: the model's)")
    p.add_argument("--k", type=int, help="consecutive failing scores to act (default: model's)")
    p.add_argument("--holdout", type=float, default=0.1,
                   help="share of workers scored but never acted on (0.1)")
    p.add_argument("--verdict-log", help="CSV file every verdict is appended to")
    p.add_argument("--proactive-per-hour", type=int,
                   help="budget of proactive replacements in any hour (one per worker, >= 4)")
    p.add_argument("--breaker-horizon-s", type=float, default=120.0,
                   help="a flagged worker not replaced and still alive after this long was a "
                   "false alarm; mostly false alarms open the breaker (120)")
    p.add_argument("--no-reconcile", action="store_true",
                   help="another process runs the reconciler")
    p.set_defaults(func=cmd_supervisor, needs_settings=True)

    p = sub.add_parser("ctl", parents=[common], help="a running supervisor's control surface")
    p.add_argument("action", choices=["list", "stats", "kill", "pause", "resume", "terminate",
                                      "degrade"])
    p.add_argument("worker_ids", nargs="*")
    p.add_argument("--name", default="sup")
    p.add_argument("--control-url")
    p.add_argument("--count", type=int, help="kill: how many random workers")
    p.add_argument("--fraction", type=float, help="kill: which share of the workers")
    p.add_argument("--seed", type=int)
    p.add_argument("--mode", choices=list(FAULT_MODES), default="leak",
                   help="degrade: the gradual fault")
    p.add_argument("--ramp-s", type=float, default=45.0, help="degrade: seconds to failure")
    p.add_argument("--limit-mb", type=float, default=400.0, help="degrade: leak's memory limit")
    p.set_defaults(func=cmd_ctl, needs_settings=True)
