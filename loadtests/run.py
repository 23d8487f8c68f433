"""`jobharness run SCENARIO`: servers -> schema -> API + supervisor -> Locust -> drain ->
exports -> invariant checks -> SLO verdict, in one run folder.

Locally every run gets its own schema and key prefix (`run_<stamp>`), so its data, exports
and checks concern that run only. With a target (staging) nothing is started: Locust drives
the target's API and the checks read the target's stores.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
import math
import os
import secrets
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import psutil
import yaml

from chaos.actions import Endpoints
from chaos.checker import check_all
from chaos.drill import DrillRunner, load_drill
from chaos.probes import make_probes
from chaos.recovery import fault_windows, recovery
from core.dispatch.index import RedisDispatch
from core.errors import DispatchUnavailable, JobHarnessError, StoreUnavailable
from core.infra.embedded import EmbeddedServices, free_port
from core.service.runtime import create_dispatch, embedded_services
from core.settings import Settings, to_env
from core.store.migrate import migrate
from core.store.pools import connect_admin, create_pool
from loadtests.export import export_tables
from loadtests.procs import Child
from loadtests.scenario import Scenario, load_scenario
from loadtests.verdict import evaluate, figures, missing_accepted

LOCUSTFILE = Path(__file__).parent / "locustfile.py"
CONVERGE_S = 6.0  # > two reconciler passes (2 s) + the Redis breaker's retry delay (2 s)
SAMPLE_FIELDS = ["ts", "elapsed_s", "phase", "WAITING", "PENDING", "PROCESSING", "COMPLETED",
                 "DEAD", "CANCELLED", "high", "medium", "low", "delayed", "processing",
                 "dead_letter", "workers_active", "workers_failed", "api_up", "redis_up",
                 "mem_used_mib", "pg_up"]


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    scenario: str
    workers: int | None = None
    jobs: int | None = None
    rate_per_s: float | None = None
    seed: int | None = None
    out: Path = Path("out/runs")
    targeted: bool = False
    locust_workers: int = 0
    memory: bool = False
    cleanup: bool = False  # drop the run's schema and keys once the folder is written
    drill: str | None = None
    predictor: str = "off"  # off, default (the shipped model) or a model file


@dataclass
class Progress:
    phase: str = "starting"
    created: int = 0
    done: int = 0
    dead: int = 0
    workers: int = 0


def _read_samples(run_dir: Path) -> list[dict[str, Any]]:
    with open(run_dir / "samples.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _embedded(settings: Settings) -> EmbeddedServices | None:
    """The embedded servers, when both stores of these settings are theirs (a drill may
    then restart them)."""
    services = embedded_services(settings)
    if settings.pg_dsn == services.pg_url() and settings.redis_url == services.redis_url():
        return services
    return None


class Run:
    def __init__(self, settings: Settings, opts: RunOptions,
                 on_progress: Callable[[Progress, Scenario, float], None]) -> None:
        overrides = {"workers": opts.workers, "jobs": opts.jobs, "rate_per_s": opts.rate_per_s,
                     "seed": opts.seed}
        self.scenario = load_scenario(opts.scenario, overrides)
        stamp = time.strftime("%Y%m%d_%H%M%S") + "_" + secrets.token_hex(2)
        self.run_id = f"{self.scenario.name}-{stamp}"
        self.dir = (opts.out / self.run_id).resolve()
        self.opts = opts
        tag = f"run_{stamp}"
        self.settings = settings if opts.targeted else replace(
            settings, schema=tag, prefix=tag, data_dir=self.dir / "state", memory=opts.memory)
        self.drill = load_drill(opts.drill) if opts.drill else None
        if self.drill is not None and self.drill.settings:
            self.settings = replace(self.settings, **self.drill.settings)  # type: ignore[arg-type]
        if self.drill is not None and self.drill.slo:
            self.scenario = replace(self.scenario, slo=replace(self.scenario.slo,
                                                               **self.drill.slo))
        if self.drill is not None and self.drill.memory:
            self.settings = replace(self.settings, memory=True)
        self.endpoints = Endpoints(proxy_api=self.settings.toxiproxy_url,
                                   control_url=self.settings.control_url,
                                   services=None if opts.targeted else _embedded(settings))
        self.child_settings = self.settings
        self.on_progress = on_progress
        self.progress = Progress()
        self.children: list[Child] = []
        self.started = time.monotonic()
        self.timings: dict[str, float] = {}
        self.mem_before = psutil.virtual_memory().used // (1024 * 1024)
        # the sampler's last PostgreSQL reading: job counts by status, workers active/failed
        self._last_pg: tuple[dict[str, int], dict[str, int]] = ({}, {"a": 0, "f": 0})

    # -- start ------------------------------------------------------------------------------
    async def _start_proxy(self) -> None:
        """Every child reaches PostgreSQL and Redis through the fault proxy."""
        port = free_port()
        self.children.append(await Child.start(
            "proxy", ["loadtests.cli", "chaos", "proxy", "--port", str(port)], env={},
            log=self.dir / "logs" / "proxy.log"))
        api = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient() as http:
            deadline = time.monotonic() + 30
            while True:
                with contextlib.suppress(httpx.TransportError):
                    await http.get(f"{api}/version")
                    break
                if time.monotonic() > deadline:
                    raise JobHarnessError("the fault proxy did not start")
                await asyncio.sleep(0.05)
            pg, rd = urlsplit(self.settings.pg_dsn or ""), urlsplit(self.settings.redis_url or "")
            listen = {}
            for name, upstream in (("postgres", f"{pg.hostname}:{pg.port}"),
                                   ("redis", f"{rd.hostname}:{rd.port}")):
                r = await http.post(f"{api}/proxies", json={
                    "name": name, "listen": "127.0.0.1:0", "upstream": upstream})
                listen[name] = r.json()["listen"]
        self.child_settings = replace(
            self.settings,
            pg_dsn=urlunsplit(pg._replace(netloc=pg.netloc.replace(
                f"{pg.hostname}:{pg.port}", listen["postgres"]))),
            redis_url=urlunsplit(rd._replace(netloc=rd.netloc.replace(
                f"{rd.hostname}:{rd.port}", listen["redis"]))))
        self.endpoints.proxy_api = api

    async def start_system(self) -> str:
        if self.drill is not None and not self.opts.targeted:
            await self._start_proxy()
        env = to_env(self.child_settings)
        if self.opts.targeted:
            if not self.settings.api_url:
                raise JobHarnessError("the target names no api_url to drive")
            return self.settings.api_url
        conn = await connect_admin(self.settings)
        try:
            await migrate(conn, self.settings.schema)
        finally:
            await conn.close()
        port = free_port()
        logs = self.dir / "logs"
        self.children.append(await Child.start(
            "api", ["core.cli", "api", "--port", str(port), "--pool-size", "10"], env=env,
            log=logs / "api.log"))
        s = self.scenario
        self.children.append(await Child.start(
            "supervisor", ["core.cli", "supervisor", "--workers", str(s.workers),
                           "--concurrency", str(s.worker_concurrency), "--name", "run",
                           "--worker-nice", str(s.worker_nice),
                           "--max-replacements", str(max(20, s.workers // 2)),
                           *self._predictor_args()],
            env=env, log=logs / "supervisor.log"))
        self.endpoints.pids = {"api": self.children[-2].proc.pid}
        if self.drill is not None and self.drill.memory:
            owner = await Child.start("memory-owner", ["loadtests.cli", "state", "serve",
                                                        "--nice", "0"],
                                      env=env, log=logs / "memory-owner.log")
            self.children.append(owner)
            self.endpoints.pids["memory-owner"] = owner.proc.pid
        return f"http://127.0.0.1:{port}"

    def _predictor_args(self) -> list[str]:
        if self.opts.predictor == "off":
            return []
        model = self.opts.predictor
        if model != "default":
            model = str(Path(model).resolve())
            if not Path(model).is_file():
                raise JobHarnessError(f"--predictor: no model file {model}")
        return ["--model", model, "--verdict-log", str(self.dir / "predictions.csv")]

    async def wait_ready(self, api_url: str, pool: Any) -> None:
        deadline = time.monotonic() + 120
        async with httpx.AsyncClient() as http:
            while True:
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get(f"{api_url}/health")).status_code == 200:
                        break
                self._check_children()
                if time.monotonic() > deadline:
                    raise JobHarnessError("the API did not become ready in 120 s")
                await asyncio.sleep(0.1)
        while not self.opts.targeted:
            n = await pool.fetchval("SELECT count(*) FROM workers WHERE status = 'ACTIVE'")
            self.progress.workers = int(n)
            self.on_progress(self.progress, self.scenario, self.elapsed)
            control = self.dir / "state" / "supervisor-run.json"
            if n >= self.scenario.workers and control.exists():
                self.endpoints.control_url = json.loads(control.read_text())["control_url"]
                break
            self._check_children()
            if time.monotonic() > deadline:
                raise JobHarnessError(f"only {n} of {self.scenario.workers} workers came up")
            await asyncio.sleep(0.2)

    def _check_children(self) -> None:
        for child in self.children:
            if not child.running and child.name in ("api", "supervisor"):
                raise JobHarnessError(f"the {child.name} process exited "
                                      f"(see {self.dir / 'logs'})")

    async def start_locust(self, api_url: str) -> list[Child]:
        s = self.scenario
        scenario_file = self.dir / "scenario.yaml"
        users = (s.users if s.model == "closed" else 1) + s.observers + s.operators
        n = self.opts.locust_workers
        base = {"JOBHARNESS_SCENARIO": str(scenario_file),
                "JOBHARNESS_RAW_DIR": str(self.dir / "raw")}
        common = ["-f", str(LOCUSTFILE), "--headless", "--host", api_url, "-u", str(users),
                  "-r", str(s.spawn_rate), "-t", f"{int(s.max_load_s)}s",
                  "--csv", str(self.dir / "locust"), "--html", str(self.dir / "locust.html"),
                  "--only-summary", "--stop-timeout", "5"]
        logs = self.dir / "logs"
        if n <= 0:
            return [await Child.start("locust", ["locust", *common],
                                      env={**base, "JOBHARNESS_JOB_BUDGET": str(s.jobs)},
                                      log=logs / "locust.log", cwd=self.dir)]
        port = free_port()
        master = await Child.start(
            "locust", ["locust", *common, "--master", "--expect-workers", str(n),
                       "--master-bind-host", "127.0.0.1", "--master-bind-port", str(port)],
            env={**base, "JOBHARNESS_JOB_BUDGET": "0"}, log=logs / "locust-master.log",
            cwd=self.dir)
        budget = math.ceil(s.jobs / n)
        workers = [await Child.start(
            f"locust-worker-{i}", ["locust", "-f", str(LOCUSTFILE), "--worker",
                                   "--master-host", "127.0.0.1", "--master-port", str(port)],
            env={**base, "JOBHARNESS_JOB_BUDGET": str(budget)},
            log=logs / f"locust-worker-{i}.log", cwd=self.dir) for i in range(n)]
        return [master, *workers]

    # -- watch ------------------------------------------------------------------------------
    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    async def sample(self, pool: Any, dispatch: RedisDispatch, api_url: str,
                     http: httpx.AsyncClient, writer: Any) -> dict[str, int]:
        """One row of samples.csv. While PostgreSQL is unavailable (a drill restarts it) the
        row repeats the last counts it read and says pg_up 0."""
        try:
            counts = {r["status"]: int(r["n"]) for r in await pool.fetch(
                "SELECT status, count(*) AS n FROM jobs GROUP BY status")}
            w = await pool.fetchrow("SELECT count(*) FILTER (WHERE status = 'ACTIVE') AS a,"
                                    " count(*) FILTER (WHERE status = 'FAILED') AS f"
                                    " FROM workers")
            pg_up = 1
            self._last_pg = counts, {"a": int(w["a"]), "f": int(w["f"])}
        except StoreUnavailable:
            (counts, w), pg_up = self._last_pg, 0
        try:
            depths = await dispatch.depths()
            redis_up = 1
        except DispatchUnavailable:
            depths, redis_up = {}, 0
        try:
            api_up = int((await http.get(f"{api_url}/health", timeout=2)).status_code == 200)
        except httpx.HTTPError:
            api_up = 0
        row = {"ts": f"{time.time():.3f}", "elapsed_s": f"{self.elapsed:.1f}",
               "phase": self.progress.phase, **{k: counts.get(k, 0) for k in SAMPLE_FIELDS[3:9]},
               **{k: depths.get(k, 0) for k in SAMPLE_FIELDS[9:15]},
               "workers_active": w["a"], "workers_failed": w["f"], "api_up": api_up,
               "redis_up": redis_up,
               "mem_used_mib": psutil.virtual_memory().used // (1024 * 1024), "pg_up": pg_up}
        writer.writerow(row)
        p = self.progress
        p.created = sum(counts.values())
        p.done = counts.get("COMPLETED", 0) + counts.get("CANCELLED", 0)
        p.dead = counts.get("DEAD", 0)
        p.workers = int(w["a"])
        self.on_progress(p, self.scenario, self.elapsed)
        return counts

    def _budget_spent(self, locust: list[Child]) -> bool:
        producers = max(1, len(locust) - 1) if len(locust) > 1 else 1
        return len(list((self.dir / "raw").glob("budget-spent-*"))) >= producers

    # -- the whole run ----------------------------------------------------------------------
    async def execute(self) -> dict[str, Any]:
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "raw").mkdir(exist_ok=True)
        (self.dir / "scenario.yaml").write_text(yaml.safe_dump(self.scenario.to_dict()))
        pool = await create_pool(self.settings, max_size=4)
        dispatch = create_dispatch(self.settings, max_connections=2)
        try:
            return await self._execute(pool, dispatch)
        finally:
            for child in reversed(self.children):
                await child.stop(timeout_s=self.scenario.drain_timeout_s)
            if self.opts.cleanup and not self.opts.targeted:
                await dispatch.flush_prefix()
                conn = await connect_admin(self.settings)
                try:
                    await conn.execute(f'DROP SCHEMA IF EXISTS "{self.settings.schema}" CASCADE')
                finally:
                    await conn.close()
            await dispatch.close()
            await pool.close()

    async def _execute(self, pool: Any, dispatch: RedisDispatch) -> dict[str, Any]:
        s = self.scenario
        api_url = await self.start_system()
        t0 = time.monotonic()
        if not self.opts.targeted:
            await self.wait_ready(api_url, pool)
        self.timings["startup_s"] = round(time.monotonic() - t0, 2)
        http = httpx.AsyncClient()
        await self._set_limits(api_url, http)
        fh = open(self.dir / "samples.csv", "w", newline="")  # noqa: ASYNC230, SIM115
        try:
            writer = csv.DictWriter(fh, fieldnames=SAMPLE_FIELDS)
            writer.writeheader()
            self.progress.phase = "load"
            locust = await self.start_locust(api_url)
            self.children += locust
            t_load = time.monotonic()
            method = await self._start_drill(pool, api_url, http)
            load_running = True
            while True:
                counts = await self.sample(pool, dispatch, api_url, http, writer)
                if load_running and (
                        sum(counts.values()) >= s.jobs or self._budget_spent(locust)
                        or not locust[0].running or time.monotonic() - t_load > s.max_load_s):
                    self.progress.phase = "stopping load"
                    # SIGINT, not SIGTERM: only then does Locust write its HTML report
                    for child in locust:
                        await child.stop(timeout_s=30, sig=signal.SIGINT)
                    self.timings["load_s"] = round(time.monotonic() - t_load, 2)
                    load_running = False
                    self.progress.phase = "drill" if method and not method.done() else "drain"
                if not load_running and (method is None or method.done()):
                    break
                await asyncio.sleep(1.0)  # the sampling period
            if method is not None:
                await method
            method_end = time.monotonic()
            self.progress.phase = "drain"
            t_drain = time.monotonic()
            while time.monotonic() - t_drain < s.drain_timeout_s:
                counts = await self.sample(pool, dispatch, api_url, http, writer)
                # After faults, invariant 2 promises convergence within a bounded time: give
                # the reconciler and the breakers that long before judging.
                converged = method is None or time.monotonic() - method_end >= CONVERGE_S
                if converged and sum(counts.get(k, 0)
                                     for k in ("WAITING", "PENDING", "PROCESSING")) == 0:
                    break
                await asyncio.sleep(1.0)
            self.timings["drain_s"] = round(time.monotonic() - t_drain, 2)
            drill_report = await self._finish_drill(pool, dispatch)
        finally:
            fh.close()
            await http.aclose()
        self.progress.phase = "checking"
        self.on_progress(self.progress, s, self.elapsed)
        async with pool.acquire() as conn:
            await export_tables(conn, self.dir)
            checks = [c.as_dict() for c in await check_all(conn, dispatch.client,
                                                           self.settings.prefix)]
        checks.append(missing_accepted(self.dir))
        if drill_report is not None:
            checks += drill_report.pop("checks")
        figs = figures(self.dir, s)
        figs["wall_s"] = round(self.elapsed, 2)
        with open(self.dir / "samples.csv", newline="") as fh:  # noqa: ASYNC230
            used = [int(r["mem_used_mib"]) for r in csv.DictReader(fh)]
        figs["peak_mem_used_mib"] = max(used, default=None)
        figs["mem_used_before_mib"] = self.mem_before
        figs["throughput_jobs_s"] = round(figs["jobs"] / max(self.timings["load_s"]
                                                             + self.timings["drain_s"], 1e-9), 1)
        verdict = {"run_id": self.run_id, "scenario": s.name, "model": s.model,
                   "timings": self.timings, "figures": figs, **evaluate(s, figs, checks)}
        if drill_report is not None:
            drill_report["faults"] = recovery(_read_samples(self.dir), drill_report["windows"])
            verdict["drill"] = drill_report
        (self.dir / "verdict.json").write_text(json.dumps(verdict, indent=2, default=str))
        (self.dir / "config.json").write_text(json.dumps({
            "scenario": s.to_dict(), "schema": self.settings.schema,
            "prefix": self.settings.prefix, "targeted": self.opts.targeted,
            "locust_workers": self.opts.locust_workers, "predictor": self.opts.predictor,
            "pid": os.getpid()}, indent=2))
        return verdict

    # -- drills -----------------------------------------------------------------------------
    async def _set_limits(self, api_url: str, http: httpx.AsyncClient) -> None:
        """The scenario's limits, set through the system's API before any load."""
        for lim in self.scenario.limits:
            body = {k: v for k, v in lim.items() if k not in ("scope", "name")}
            r = await http.put(f"{api_url}/limits/{lim['scope']}/{lim['name']}", json=body)
            if r.status_code != 200:
                raise JobHarnessError(f"the scenario's limit {lim} was refused: {r.text}")

    async def _start_drill(self, pool: Any, api_url: str, http: httpx.AsyncClient
                           ) -> asyncio.Task[None] | None:
        if self.drill is None:
            return None
        probes = make_probes(pool, api_url, http, expected_workers=self.scenario.workers)
        self.runner = DrillRunner(self.drill, self.endpoints, probes, seed=self.scenario.seed)
        self.runner.steady_before = await self.runner.check_steady_state()
        self.drill_offset_s = self.elapsed
        self.drill_wall_t0 = time.time()
        return asyncio.create_task(self.runner.run_method())

    async def _finish_drill(self, pool: Any, dispatch: RedisDispatch) -> dict[str, Any] | None:
        if self.drill is None:
            return None
        runner, drill = self.runner, self.drill
        runner.steady_after = await runner.check_steady_state(wait_s=drill.settle_s)
        windows = fault_windows(runner.journal, self.drill_offset_s)
        checks = [
            {"name": "drill_not_aborted", "description": "no abort probe failed during the method",
             "violations": 0 if runner.aborted is None else 1,
             "examples": [] if runner.aborted is None else [str(runner.aborted)],
             "ok": runner.aborted is None},
            {"name": "steady_state_before", "description": "probes held before the faults",
             "violations": sum(not r["ok"] for r in runner.steady_before), "examples": [],
             "ok": all(r["ok"] for r in runner.steady_before)},
            {"name": "steady_state_after", "description": "probes held again after the faults",
             "violations": sum(not r["ok"] for r in runner.steady_after), "examples": [],
             "ok": all(r["ok"] for r in runner.steady_after)},
        ]
        storm = 0
        for w in windows:
            if w["name"] in ("partition", "restart_store") and w["args"].get("target") in \
                    drill.expect_no_replacement_during:
                storm += int(await pool.fetchval(
                    "SELECT count(*) FROM workers WHERE status = 'FAILED'"
                    " AND failure_reason LIKE 'heartbeat timed out%'"
                    " AND stopped_at BETWEEN to_timestamp($1) AND to_timestamp($2)",
                    self.drill_wall_t0 + w["start_s"] - self.drill_offset_s,
                    self.drill_wall_t0 + w["end_s"] - self.drill_offset_s
                    + self.settings.heartbeat_ttl_s))
        checks.append({"name": "no_replacement_storm",
                       "description": "no worker replaced for a stale heartbeat while a store"
                                      " it heartbeats to was partitioned or restarted",
                       "violations": storm, "examples": [], "ok": storm == 0})
        try:
            stale = (await dispatch.event_counts()).get("stale_rejected", 0)
        except DispatchUnavailable:
            stale = None
        return {"name": drill.name, "journal": runner.journal,
                "steady_before": runner.steady_before, "steady_after": runner.steady_after,
                "windows": windows, "zombie_results_rejected": stale, "checks": checks}

