"""`jobharness chaos proxy`: the toxiproxy-compatible fault proxy as a process."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

from core.settings import Settings


async def _serve_proxy(args: argparse.Namespace, specs: list[dict[str, Any]],
                       token: str | None) -> None:

    from chaos.proxy_api import ProxyCollection, proxy_app
    from core.infra.serving import bind, serving, stop_on_signals

    collection = ProxyCollection(seed=args.seed, allow_remote=args.allow_remote)
    for spec in specs:
        await collection.create(spec)
    sock, url = bind(args.host, args.port, token=token, insecure=args.insecure,
                     surface="the fault proxy's API")
    stop = stop_on_signals()
    async with serving(proxy_app(collection), sock, token=token):
        print(f"fault proxy API at {url}", flush=True)
        await stop.wait()
    await collection.close()


def cmd_chaos(args: argparse.Namespace, settings: Settings) -> int:
    from core.errors import JobHarnessError

    specs: list[dict[str, Any]] = []
    if args.config:
        try:
            specs = json.loads(Path(args.config).read_text())
        except (OSError, ValueError) as exc:
            raise JobHarnessError(f"cannot read proxy config {args.config}: {exc}") from exc
        if not isinstance(specs, list):
            raise JobHarnessError(f"{args.config} must hold a JSON list of proxies")
    # The standard event loop, not uvloop: on uvloop 0.23 a proxy's listener re-opened after a
    # hard partition stopped accepting under the fleet's reconnects (its accept queue full, the
    # process idle; the same with an accept loop of the proxy's own), so the drill's partition
    # never healed for the workers behind it.
    asyncio.run(_serve_proxy(args, specs, settings.api_token))
    return 0


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("chaos", parents=[common], help="fault injection")
    ch = p.add_subparsers(dest="action", required=True)
    px = ch.add_parser("proxy", parents=[common],
                       help="serve the toxiproxy-compatible fault proxy")
    px.add_argument("--host", default="127.0.0.1")
    px.add_argument("--port", type=int, default=8474, help="API port (8474, as toxiproxy)")
    px.add_argument("--seed", type=int, help="seed of the toxicity draws")
    px.add_argument("--insecure", action="store_true",
                    help="let the API listen beyond loopback without JOBHARNESS_API_TOKEN")
    px.add_argument("--allow-remote", action="store_true",
                    help="let proxies listen beyond loopback (each relays to a store)")
    px.add_argument("--config", help="JSON list of proxies to create at start")
    px.set_defaults(func=cmd_chaos, needs_settings=True)
    add_fault_parser(ch, common)
    add_nemesis_parser(ch, common)
    add_drill_parser(sub, common)


async def _fault(args: argparse.Namespace, settings: Settings) -> Any:
    import random

    from chaos import actions
    from chaos.actions import Endpoints, action_named

    ep = Endpoints(proxy_api=args.proxy_url or settings.toxiproxy_url,
                   control_url=args.control_url or settings.control_url,
                   token=settings.api_token)
    rng = random.Random(args.seed)
    kind = args.fault
    if kind == "heal":
        return await actions.heal(ep, args.store)
    if kind == "restart-store":
        return await _restart_store(args, settings, ep)
    name, fault_args = {
        "partition": ("partition", {"target": args.store, "mode": args.mode}),
        "latency": ("toxic", {"target": args.store, "type": "latency",
                              "attributes": {"latency": args.ms, "jitter": args.jitter_ms}}),
        "kill-workers": ("kill_workers", {"count": args.count, "fraction": args.fraction}),
        "pause-workers": ("pause_workers", {"count": args.count, "fraction": args.fraction}),
        "resume-workers": ("resume_workers", {}),
    }[kind]
    if "target" in fault_args and args.store is None:
        raise actions.ActionError(f"{kind} needs --store postgres or --store redis")
    if args.clients:
        if "target" not in fault_args:
            raise actions.ActionError(f"--clients applies to network faults, not {kind}")
        await actions.discover_proxies(ep)
        fault_args["clients"] = [c.strip() for c in args.clients.split(",") if c.strip()]
    action = action_named(name)
    done = await action.apply(ep, rng, fault_args)
    if args.duration_s and action.heal is not None:
        await asyncio.sleep(args.duration_s)  # the fault lasts this long, then heals
        done["healed"] = await action.heal(ep, fault_args, done)
    return done


async def _restart_store(args: argparse.Namespace, settings: Settings, ep: Any) -> Any:
    """Restart the embedded server of a store (only those: nothing given by DSN/URL)."""
    from chaos import actions
    from core.service.runtime import embedded_services

    if args.store is None:
        raise actions.ActionError("restart-store needs --store postgres or --store redis")
    if settings.pg_dsn or settings.redis_url:
        raise actions.ActionError("restart-store restarts the embedded servers only; the "
                                  "configured stores are restarted with their own tooling")
    services = embedded_services(settings)
    running = {s.name: s.running for s in services.status()}
    if not running["postgres" if args.store == "postgres" else "valkey"]:
        raise actions.ActionError(f"the embedded {args.store} server is not running "
                                  "(jobharness services up)")
    ep.services = services
    return await actions.restart_store(ep, args.store, args.restart_mode, args.down_s)


def cmd_fault(args: argparse.Namespace, settings: Settings) -> int:
    from chaos.actions import ActionError
    from core.cli.output import print_json, run_async
    from core.errors import JobHarnessError

    try:
        print_json(run_async(_fault(args, settings)))
    except ActionError as exc:
        raise JobHarnessError(str(exc)) from exc
    return 0


def add_fault_parser(ch: Any, common: argparse.ArgumentParser) -> None:
    f = ch.add_parser("fault", parents=[common], help="apply one fault now")
    f.add_argument("fault", choices=["partition", "latency", "heal", "kill-workers",
                                     "pause-workers", "resume-workers", "restart-store"])
    f.add_argument("--store", choices=["redis", "postgres"], help="which proxy to fault")
    f.add_argument("--mode", choices=["hard", "blackhole"], default="hard")
    f.add_argument("--clients", help="partition/latency: only these client groups, comma-"
                   "separated (a run's proxies: api, supervisor, workers-a, workers-b)")
    f.add_argument("--ms", type=float, default=100.0, help="latency: delay per reply")
    f.add_argument("--jitter-ms", type=float, default=0.0)
    f.add_argument("--count", type=int)
    f.add_argument("--fraction", type=float)
    f.add_argument("--seed", type=int)
    f.add_argument("--duration-s", type=float, help="heal after this long (else stays)")
    f.add_argument("--restart-mode", choices=["fast", "immediate", "kill"],
                   help="restart-store: how the store stops (PostgreSQL: immediate; Redis: "
                   "kill only, and it comes back empty)")
    f.add_argument("--down-s", type=float, default=2.0,
                   help="restart-store: how long the store stays down (2)")
    f.add_argument("--proxy-url", help="toxiproxy API (env JOBHARNESS_TOXIPROXY_URL)")
    f.add_argument("--control-url", help="supervisor control surface (JOBHARNESS_CONTROL_URL)")
    f.set_defaults(func=cmd_fault, needs_settings=True)


def cmd_nemesis(args: argparse.Namespace) -> int:
    from chaos.nemesis import random_drill, schedule

    drill = random_drill(args.seed, args.intensity)
    print(f"{drill.name}: {drill.description}; span {drill.span_s:.0f} s")
    for line in schedule(drill):
        print(line)
    return 0


def add_nemesis_parser(ch: Any, common: argparse.ArgumentParser) -> None:
    n = ch.add_parser("nemesis", parents=[common],
                      help="print the faults `--drill random --seed S` would run, in order")
    n.add_argument("--seed", type=int, required=True)
    n.add_argument("--intensity", choices=["low", "high"], default="low")
    n.set_defaults(func=cmd_nemesis, needs_settings=False)


async def _drill_alone(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    """The drill against a running system (no load of ours): steady state, method, then up to
    `settle_s` for every job created before the method ended to finish and for Redis's
    index to agree, then the checks."""
    import time
    from datetime import UTC, datetime

    import httpx

    from chaos.actions import Endpoints
    from chaos.checker import check_all, redis_agrees
    from chaos.drill import DrillRunner
    from chaos.nemesis import find_drill
    from chaos.probes import deployment_fleet, make_probes
    from core.contract.observe import BACKLOG_CREATED_BEFORE
    from core.errors import JobHarnessError, StoreUnavailable
    from core.service.runtime import open_runtime

    drill = find_drill(args.file, seed=args.seed, intensity=args.intensity)
    if not settings.api_url:
        raise JobHarnessError("a drill alone needs the target's api_url (--target FILE)")
    from core.infra.auth import auth_headers

    async with open_runtime(settings, migrate_first=False, memory=False) as rt, \
            httpx.AsyncClient(headers=auth_headers(settings.api_token)) as http:
        pool, dispatch = rt.pool, rt.dispatch
        fleet = await deployment_fleet(pool, http, settings.control_url)
        runner = DrillRunner(drill, Endpoints(proxy_api=settings.toxiproxy_url,
                                              control_url=settings.control_url,
                                              token=settings.api_token),
                             make_probes(pool, settings.api_url, http, fleet), seed=args.seed)
        await runner.begin()
        if runner.method is not None:
            await runner.method
        cutoff = datetime.now(UTC)
        deadline = time.monotonic() + drill.settle_s
        while time.monotonic() < deadline:  # the jobs the faults hit get to finish, and
            try:  # Redis's index to agree
                if not await pool.fetchval(BACKLOG_CREATED_BEFORE, cutoff) and \
                        await redis_agrees(pool, dispatch.client, settings.prefix):
                    break
            except StoreUnavailable:
                pass
            await asyncio.sleep(1.0)  # polled: the jobs are someone else's
        async with pool.acquire() as conn:
            invariants = [c.as_dict() for c in await check_all(
                conn, dispatch.client, settings.prefix, created_before=cutoff)]
        report = await runner.conclude(pool, dispatch, invariants,
                                       heartbeat_ttl_s=settings.heartbeat_ttl_s)
        return {"drill": drill.name, "passed": report.passed, "journal": report.journal,
                "steady_before": report.steady_before, "steady_after": report.steady_after,
                "zombie_results_rejected": report.zombie_results_rejected,
                "faults": report.windows, "invariants": report.checks}


def cmd_drill(args: argparse.Namespace, settings: Settings) -> int:
    from chaos.drill import DrillError
    from core.cli.output import print_json, run_async
    from core.errors import JobHarnessError

    try:
        result = run_async(_drill_alone(args, settings))
    except DrillError as exc:
        raise JobHarnessError(str(exc)) from exc
    if args.json:
        print_json(result)
    else:
        from rich.console import Console

        from chaos.summary import checks_table, drill_summary, failures, verdict_line

        out = Console()
        out.print(checks_table([], result["invariants"], title=f"drill {result['drill']}"))
        out.print(drill_summary({**result, "name": result["drill"]}))
        for line in failures(result["invariants"]):
            out.print(line)
        out.print(verdict_line(result["passed"], [c["name"] for c in result["invariants"]
                                                   if not c["ok"]]))
    return 0 if result["passed"] else 1


def add_drill_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    d = sub.add_parser("drill", parents=[common],
                       help="run one drill alone against a target (no load; see run --drill)")
    d.add_argument("file", help="a drill name or YAML file; `random`: drawn from --seed")
    d.add_argument("--seed", type=int, default=1)
    d.add_argument("--intensity", choices=["low", "high"], default="low",
                   help="of the random drill (chaos/nemesis.py)")
    d.set_defaults(func=cmd_drill, needs_settings=True)
