"""`jobharness run SCENARIO`: servers -> schema -> API + supervisor -> Locust -> drain ->
exports -> invariant checks -> SLO verdict, in one run folder.

Locally every run gets its own schema and key prefix (`run_<stamp>`), so its data, exports
and checks concern that run only. With a target (staging) nothing is started: Locust drives
the target's API and the checks read the target's stores.

`Run` only sequences the parts, each of which does one job: `SystemUnderTest` (the processes
started and where faults go), `Load` (Locust), `Sampler` (samples.csv), `DrillRunner` (the
drill, chaos/drill.py), `export_tables` (the stores' rows as CSV), the checker
(chaos/checker.py) and `verdict` (SLOs over the run folder).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import yaml

from chaos.checker import check_all, redis_agrees
from chaos.drill import DrillReport, DrillRunner
from chaos.nemesis import find_drill
from chaos.probes import Fleet, deployment_fleet, make_probes
from chaos.recovery import fault_windows, recovery
from core.contract import runfolder
from core.errors import DispatchUnavailable, JobHarnessError
from core.infra.auth import auth_headers
from core.memory.events import OWNER_GROUP, owner_caught_up, owner_status
from core.service.runtime import open_runtime
from core.settings import SYNTHETIC_JOB_TYPES, Settings, with_values
from core.store.exports import export_tables
from loadtests.load import Load
from loadtests.sampler import STATUSES, Sampler, mem_used_mib
from loadtests.scenario import Scenario, load_scenario
from loadtests.scratch import scratch_schema
from loadtests.system import SystemUnderTest, embedded_of
from loadtests.verdict import (
    evaluate,
    faults_under_load,
    figures,
    missing_accepted,
    read_requests,
    window_load,
)

CONVERGE_S = 6.0  # > two reconciler passes (2 s) + the Redis breaker's retry delay (2 s)
BACKLOG = ("WAITING", "PENDING", "PROCESSING")
SAMPLE_PERIOD_S = 1.0
MEMORY_CATCH_UP_S = 30.0
# Under a drill the load runs until the drill has settled, whatever the scenario's job count;
# this bounds it in count (time is bounded by max_load_s + the drill's span).
DRILL_JOB_CAP = 200_000


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    scenario: str
    workers: int | None = None
    prefetch: int | None = None  # overrides the scenario's worker_prefetch
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
    intensity: str = "low"  # of `--drill random` (chaos/nemesis.py)
    api_replicas: int = 1  # API processes; Locust deals its users out over them
    holdout: float = 0.1  # with a predictor: workers scored but never acted on (the A/B arm)


@dataclass
class Progress:
    phase: str = "starting"
    created: int = 0
    done: int = 0
    dead: int = 0
    workers: int = 0


class Run:
    def __init__(self, settings: Settings, opts: RunOptions,
                 on_progress: Callable[[Progress, Scenario, float], None]) -> None:
        overrides = {"workers": opts.workers, "jobs": opts.jobs, "rate_per_s": opts.rate_per_s,
                     "seed": opts.seed, "worker_prefetch": opts.prefetch}
        if not 0 <= opts.holdout <= 0.9:
            raise JobHarnessError(f"--holdout must be between 0 and 0.9, got {opts.holdout:g}")
        self.scenario = load_scenario(opts.scenario, overrides)
        stamp = time.strftime("%Y%m%d_%H%M%S") + "_" + secrets.token_hex(2)
        self.run_id = f"{self.scenario.name}-{stamp}"
        self.dir = (opts.out / self.run_id).resolve()
        self.opts = opts
        self.tag = f"run_{stamp}"
        if opts.targeted:
            self._check_target_runs(self.scenario, settings)
        # the processes a local run starts are its own: the synthetic handlers are on there
        # unless the settings turn them off
        self.settings = settings if opts.targeted else replace(
            settings, schema=self.tag, prefix=self.tag,
            data_dir=self.dir / runfolder.STATE, memory=opts.memory,
            synthetic_handlers=settings.synthetic_handlers is not False)
        self.drill = find_drill(opts.drill, seed=self.scenario.seed,
                                intensity=opts.intensity) if opts.drill else None
        if self.drill is not None:
            self._check_load_covers(self.scenario, self.drill)
            self.settings = with_values(self.settings, self.drill.settings,
                                        f"drill {self.drill.name}")
            if self.drill.slo:
                self.scenario = replace(self.scenario, slo=replace(self.scenario.slo,
                                                                   **self.drill.slo))
            if self.drill.memory:
                self.settings = replace(self.settings, memory=True)
        self.system = SystemUnderTest(self.settings, self.scenario, self.dir,
                                      targeted=opts.targeted, services=embedded_of(settings),
                                      extra_supervisor_args=self._predictor_args(),
                                      clock_skew_s=self.drill.clock_skew_s if self.drill
                                      else None, api_replicas=opts.api_replicas)
        self.on_progress = on_progress
        self.progress = Progress()
        self.started = time.monotonic()
        self.started_wall = time.time()
        self.timings: dict[str, float] = {}
        self.mem_before = mem_used_mib()

    @staticmethod
    def _check_target_runs(scenario: Scenario, settings: Settings) -> None:
        """Refuse, before anything starts, a scenario of synthetic job types against a target
        that has not said its API and workers run them."""
        wanted = sorted(t for t, share in scenario.mix.items()
                        if share > 0 and t in SYNTHETIC_JOB_TYPES)
        if wanted and not settings.synthetic_on:
            raise JobHarnessError(
                f"scenario {scenario.name!r} submits synthetic job types ({', '.join(wanted)}), "
                "which a target's API refuses unless its API and workers run with "
                "JOBHARNESS_SYNTHETIC_HANDLERS=1; once they do, say synthetic_handlers: true "
                "in the target file (docs/security.md)")

    @staticmethod
    def _check_load_covers(scenario: Scenario, drill: Any) -> None:
        """Refuse, before anything starts, a drill whose faults would outlast the load: a
        load shape ends when its last stage does, whatever the drill still has to do."""
        end = scenario.shape_end_s
        if end is not None and end < drill.span_s:
            raise JobHarnessError(
                f"scenario {scenario.name!r} ends its load at {end:g} s (its shape), but drill "
                f"{drill.name!r} needs load for up to {drill.span_s:g} s (faults until "
                f"{drill.length_s:g} s, {drill.load_after_s:g} s of load after them, settle_s "
                f"{drill.settle_s:g} s): run the drill under a scenario without a shape "
                f"(for example `drill`) or lengthen the shape")

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def _predictor_args(self) -> list[str]:
        if self.opts.predictor == "off":
            return []
        from predictor.shipped import is_named

        model = self.opts.predictor
        if not is_named(model):
            model = str(Path(model).resolve())
            if not Path(model).is_file():
                raise JobHarnessError(f"--predictor: no model file {model}")
        return ["--model", model, "--verdict-log", str(self.dir / runfolder.PREDICTIONS),
                "--holdout", str(self.opts.holdout)]

    def _show(self, row: dict[str, Any] | None = None, workers: int | None = None) -> None:
        p = self.progress
        if row is not None:
            p.created = sum(int(row[k]) for k in STATUSES)
            p.done = int(row["COMPLETED"]) + int(row["CANCELLED"])
            p.dead = int(row["DEAD"])
            p.workers = int(row["workers_active"])
        if workers is not None:
            p.workers = workers
        self.on_progress(p, self.scenario, self.elapsed)

    # -- the whole run ----------------------------------------------------------------------
    async def execute(self) -> dict[str, Any]:
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / runfolder.RAW).mkdir(exist_ok=True)
        (self.dir / runfolder.SCENARIO).write_text(yaml.safe_dump(self.scenario.to_dict()))
        if self.opts.targeted:
            return await self._with_stores(self.settings)
        async with scratch_schema(self.settings, self.tag, keep=not self.opts.cleanup) as s:
            return await self._with_stores(s)

    async def _with_stores(self, settings: Settings) -> dict[str, Any]:
        """The harness's own connections (direct to the stores, never through the proxy)."""
        async with open_runtime(settings, pool_size=4, redis_connections=2,
                                migrate_first=False, memory=False) as rt:
            try:
                return await self._execute(rt.pool, rt.dispatch)
            finally:
                await self.system.stop(timeout_s=self.scenario.drain_timeout_s)

    async def _execute(self, pool: Any, dispatch: Any) -> dict[str, Any]:
        api_url = await self.system.start(
            with_proxy=self.drill is not None,
            with_memory_owner=self.drill is not None and self.drill.memory)
        t0 = time.monotonic()
        if not self.opts.targeted:
            await self.system.wait_ready(api_url, pool,
                                         on_workers=lambda n: self._show(workers=n))
        self.timings["startup_s"] = round(time.monotonic() - t0, 2)
        async with httpx.AsyncClient(headers=auth_headers(self.settings.api_token)) as http:
            await self._set_limits(api_url, http)
            with Sampler(self.dir / runfolder.SAMPLES, pool, dispatch, api_url, http,
                         self.started) as sampler:
                runner, offset_s = await self._load_and_faults(sampler, api_url, pool, http)
                await self._drain(sampler, runner)
                memory = await self._memory_caught_up(dispatch)
                self.progress.phase = "checking"
                self._show()
                async with pool.acquire() as conn:
                    await export_tables(conn, self.dir)
                    checks = [c.as_dict() for c in await check_all(conn, dispatch.client,
                                                                   self.settings.prefix)]
                checks.append(missing_accepted(self.dir))
                report, loads = None, []
                if runner is not None:
                    windows = fault_windows(runner.journal, offset_s)
                    # the raw requests read once: the check and the verdict share the result
                    loads = window_load(read_requests(self.dir / runfolder.RAW), windows,
                                        self.started_wall)
                    under_load = faults_under_load(
                        [{**w, **load} for w, load in zip(windows, loads, strict=True)])
                    report = await runner.conclude(pool, dispatch, checks,
                                                   heartbeat_ttl_s=self.settings.heartbeat_ttl_s,
                                                   extra=[under_load])
                    checks = report.checks
        verdict = self._verdict(checks, sampler, report, offset_s, loads, memory)
        return verdict

    async def _load_and_faults(self, sampler: Sampler, api_url: str, pool: Any,
                               http: httpx.AsyncClient
                               ) -> tuple[DrillRunner | None, float]:
        """Locust and the drill's method together, until the load is done and the method
        has run its course."""
        s = self.scenario
        self.progress.phase = "load"
        drill = self.drill
        if drill is None:
            load = Load(s, self.dir, api_url, locust_workers=self.opts.locust_workers,
                        token=self.settings.api_token, replicas=self.system.api_urls)
            deadline_s = s.max_load_s
        else:  # the load goes on until the drill has settled, whatever the job count
            deadline_s = s.max_load_s + drill.span_s
            load = Load(s, self.dir, api_url, locust_workers=self.opts.locust_workers,
                        budget=max(s.jobs, DRILL_JOB_CAP), duration_s=deadline_s,
                        token=self.settings.api_token, replicas=self.system.api_urls)
        self.system.children += await load.start()
        t_load = time.monotonic()
        runner, settling, offset_s = None, None, 0.0
        if drill is not None:
            fleet = Fleet(s.workers, f"this run's supervisor (--workers {s.workers})")
            if self.opts.targeted:
                fleet = await deployment_fleet(pool, http, self.settings.control_url)
            probes = make_probes(pool, api_url, http, fleet)
            runner = DrillRunner(drill, self.system.endpoints, probes, seed=s.seed)
            await runner.begin()
            offset_s = self.elapsed
            settling = asyncio.create_task(runner.settle(after_s=drill.load_after_s))
            self.progress.phase = "drill"
        loading = True
        while loading:
            row = await sampler.sample(self.progress.phase)
            if runner is not None and not runner.settled and runner.method_done:
                self.progress.phase = "settle"
            self._show(row)
            spent = self.progress.created >= s.jobs or load.budget_spent()
            timed_out = time.monotonic() - t_load > deadline_s
            settled = runner is None or runner.settled
            if timed_out or ((spent or not load.running) and settled):
                self.progress.phase = "stopping load"
                await load.stop()
                self.timings["load_s"] = round(time.monotonic() - t_load, 2)
                loading = False
            else:
                await asyncio.sleep(SAMPLE_PERIOD_S)
        if settling is not None:
            await settling
        return runner, offset_s

    async def _drain(self, sampler: Sampler, runner: DrillRunner | None) -> None:
        """Until nothing is left to run and Redis's index agrees (no orphan entry), or the
        scenario's drain timeout. After faults, invariant 2 promises convergence within a
        bounded time: the reconciler and the breakers get that long before it is judged."""
        self.progress.phase = "drain"
        t_drain = time.monotonic()
        while time.monotonic() - t_drain < self.scenario.drain_timeout_s:
            row = await sampler.sample(self.progress.phase)
            self._show(row)
            converged = runner is None or runner.ended_at is None \
                or time.monotonic() - runner.ended_at >= CONVERGE_S
            if converged and sum(int(row[k]) for k in BACKLOG) == 0 and await redis_agrees(
                    sampler.pool, sampler.dispatch.client, self.settings.prefix):
                break
            await asyncio.sleep(SAMPLE_PERIOD_S)
        self.timings["drain_s"] = round(time.monotonic() - t_drain, 2)

    async def _memory_caught_up(self, dispatch: Any) -> dict[str, Any] | None:
        """With state memory on: once the jobs have drained, give the owner up to
        MEMORY_CATCH_UP_S to take every state event emitted until then, and say whether it
        did and where it stands."""
        if not self.settings.memory or self.opts.targeted:
            return None
        out: dict[str, Any] = {"caught_up": False}
        try:
            upto, _, _ = await dispatch.state_events_position(OWNER_GROUP)
            out["events_upto"] = upto
            deadline = time.monotonic() + MEMORY_CATCH_UP_S
            while time.monotonic() < deadline:
                if await owner_caught_up(dispatch, upto):
                    out["caught_up"] = True
                    break
                await asyncio.sleep(0.2)
            _, out["events_delivered"], out["events_pending"] = \
                await dispatch.state_events_position(OWNER_GROUP)
        except DispatchUnavailable as exc:
            out["error"] = str(exc)
        return {**await owner_status(dispatch), **out}

    def _verdict(self, checks: list[dict[str, Any]], sampler: Sampler,
                 report: DrillReport | None, offset_s: float, loads: list[dict[str, Any]],
                 memory: dict[str, Any] | None = None) -> dict[str, Any]:
        s = self.scenario
        figs = figures(self.dir, s)
        if memory is not None:
            figs["memory_owner"] = memory
        figs["wall_s"] = round(self.elapsed, 2)
        figs["peak_mem_used_mib"] = sampler.peak_mem_used_mib
        figs["mem_used_before_mib"] = self.mem_before
        figs["throughput_jobs_s"] = round(figs["jobs"] / max(self.timings["load_s"]
                                                             + self.timings["drain_s"], 1e-9), 1)
        verdict = {"run_id": self.run_id, "scenario": s.name, "model": s.model,
                   "timings": self.timings, "figures": figs, **evaluate(s, figs, checks)}
        if report is not None:
            windows = fault_windows(report.journal, offset_s)
            verdict["drill"] = {
                "name": report.name, "journal": report.journal,
                "steady_before": report.steady_before, "steady_after": report.steady_after,
                "windows": windows, "zombie_results_rejected": report.zombie_results_rejected,
                "faults": [{**f, **w} for f, w in zip(recovery(sampler.rows, windows), loads,
                                                      strict=True)]}
        (self.dir / runfolder.VERDICT).write_text(json.dumps(verdict, indent=2, default=str))
        (self.dir / runfolder.CONFIG).write_text(json.dumps({
            "scenario": s.to_dict(), "schema": self.settings.schema,
            "prefix": self.settings.prefix, "targeted": self.opts.targeted,
            "locust_workers": self.opts.locust_workers, "predictor": self.opts.predictor,
            "api_replicas": self.opts.api_replicas, "holdout": self.opts.holdout,
            "pid": os.getpid()}, indent=2))
        return verdict

    async def _set_limits(self, api_url: str, http: httpx.AsyncClient) -> None:
        """The scenario's limits, set through the system's API before any load."""
        for lim in self.scenario.limits:
            body = {k: v for k, v in lim.items() if k not in ("scope", "name")}
            r = await http.put(f"{api_url}/limits/{lim['scope']}/{lim['name']}", json=body)
            if r.status_code != 200:
                raise JobHarnessError(f"the scenario's limit {lim} was refused: {r.text}")
