"""Drills, modelled on Chaos Toolkit's experiments: a steady-state hypothesis (probes checked
before and after), a timed method (actions at offsets, repeated, victims drawn with a seed),
and rollbacks that always run (every proxy healed, every paused worker resumed). Everything
done is written to a journal with its time since the drill started.

One runner serves `jobharness drill` (a drill alone against a running system) and
`jobharness run --drill` (a drill under the run's load): `begin` checks the steady state and
starts the method; `conclude` waits for it, gives the system `settle_s` to return to its
steady state, adds the drill's own checks to the invariant checks it is given, and returns a
report that passes only when every check holds.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from chaos import actions
from chaos.actions import ACTIONS, ActionError, Endpoints, action_named
from chaos.recovery import fault_windows
from core.contract.observe import HEARTBEAT_REPLACEMENTS, QUARANTINED
from core.errors import ConfigError, DispatchUnavailable, StoreUnavailable
from core.settings import parse_values
from core.worker.clock import check_skew

DRILL_DIR = Path(__file__).parent / "drills"
LOAD_AFTER_S = 10.0  # load kept on after the last fault, so recovery is measured under it


@dataclass(frozen=True)
class ProbeResult:
    """A probe's answer: whether it holds, what it found, what it expected, and (when it does
    not hold) why."""

    ok: bool
    found: Any
    expected: str
    why: str = ""


Probe = Callable[[dict[str, Any]], Awaitable[ProbeResult]]


class DrillError(ValueError):
    """A drill file is invalid."""


@dataclass(frozen=True, kw_only=True)
class Step:
    action: str
    at_s: float
    args: dict[str, Any]
    duration_s: float | None = None  # heal after this long (network faults, pauses)
    every_s: float | None = None
    repeat: int = 1


@dataclass(frozen=True, kw_only=True)
class Drill:
    name: str
    description: str = ""
    steady_state: list[dict[str, Any]] = field(default_factory=list)
    method: list[Step] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)  # liveness etc. for the run
    settle_s: float = 60.0
    expect_no_replacement_during: list[str] = field(default_factory=list)
    slo: dict[str, float] = field(default_factory=dict)  # scenario SLOs relaxed for the fault
    abort: list[dict[str, Any]] = field(default_factory=list)  # probes watched during the method
    memory: bool = False  # run a state-memory owner (for faults that take it away)
    # a worker group's clock runs this far off for the whole run (core.worker.clock)
    clock_skew_s: dict[str, float] = field(default_factory=dict)
    # under a run's load: how long the load goes on after the method, before the steady
    # state is checked again (the recovery of the last fault is measured under load)
    load_after_s: float = LOAD_AFTER_S

    @property
    def length_s(self) -> float:
        """From the drill's start until its last fault heals (a store restart counts its
        `down_s`)."""
        return max((s.at_s + (s.every_s or 0) * (s.repeat - 1)
                    + (s.duration_s or float(s.args.get("down_s", 0) or 0))
                    for s in self.method), default=0.0)

    @property
    def span_s(self) -> float:
        """The longest a drill keeps a run's load going: its method, the load after it, and
        the settle period in which the steady state must hold again."""
        return self.length_s + self.load_after_s + self.settle_s


def available() -> list[str]:
    return sorted([*(p.stem for p in DRILL_DIR.glob("*.yaml")), "random"])


def load_drill(name_or_path: str) -> Drill:
    path = Path(name_or_path)
    if not path.suffix:
        path = DRILL_DIR / f"{name_or_path}.yaml"
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise DrillError(f"unknown drill {name_or_path!r} (known: {', '.join(available())})"
                         ) from exc
    except yaml.YAMLError as exc:
        raise DrillError(f"{path}: not valid YAML: {exc}") from exc
    steps = []
    for i, raw in enumerate(data.pop("method", []) or []):
        raw = dict(raw)
        action = raw.pop("action", None)
        if isinstance(action, str):
            action = action.replace("-", "_")  # restart-store as the CLI spells it
        if action not in ACTIONS:
            raise DrillError(f"{path}: method[{i}].action must be one of "
                             f"{', '.join(sorted(ACTIONS))}")
        try:
            steps.append(Step(action=action, at_s=float(raw.pop("at_s", 0)),
                              duration_s=raw.pop("duration_s", None),
                              every_s=raw.pop("every_s", None),
                              repeat=int(raw.pop("repeat", 1)), args=raw))
        except (TypeError, ValueError) as exc:
            raise DrillError(f"{path}: method[{i}]: {exc}") from exc
        if steps[-1].repeat > 1 and not steps[-1].every_s:
            raise DrillError(f"{path}: method[{i}]: repeat needs every_s")
    try:
        parse_values(data.get("settings") or {}, f"{path}: settings")
    except ConfigError as exc:
        raise DrillError(str(exc)) from exc
    _check_skews(data.get("clock_skew_s") or {}, path)
    name = data.get("name")
    if not isinstance(name, str) or not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", name):
        raise DrillError(f"{path}: name must be 1-64 letters, digits, '.', '_' or '-', "
                         "starting with a letter or digit")
    try:
        return Drill(method=steps, **data)
    except TypeError as exc:
        raise DrillError(f"{path}: {exc}") from exc


def _check_skews(skew: Any, path: Path) -> None:
    try:
        if not isinstance(skew, dict):
            raise ValueError("clock_skew_s must map worker groups to seconds")
        for group, offset in skew.items():
            check_skew(float(offset), f"clock_skew_s.{group}")
    except (TypeError, ValueError) as exc:
        raise DrillError(f"{path}: {exc}") from exc


@dataclass
class DrillReport:
    """What a drill did and whether the system kept its promises meanwhile."""

    name: str
    journal: list[dict[str, Any]]
    steady_before: list[dict[str, Any]]
    steady_after: list[dict[str, Any]]
    windows: list[dict[str, Any]]  # each fault's window, in seconds since the drill began
    checks: list[dict[str, Any]]  # the drill's own checks and the invariants it was given
    zombie_results_rejected: int | None = None

    @property
    def passed(self) -> bool:
        """The one pass rule: every check holds (an empty list never passes)."""
        return bool(self.checks) and all(c["ok"] for c in self.checks)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "passed": self.passed, "journal": self.journal,
                "steady_before": self.steady_before, "steady_after": self.steady_after,
                "windows": self.windows, "zombie_results_rejected":
                self.zombie_results_rejected, "checks": self.checks}


def probe_failures(results: list[dict[str, Any]]) -> list[str]:
    """Each probe that did not hold: what it found against what it expected, and why."""
    return [f"{r['probe']}: found {r['found']}, expected {r['expected']}"
            + (f" ({r['why']})" if r.get("why") else "") for r in results if not r["ok"]]


def _check(name: str, description: str, violations: int, examples: list[str] | None = None
           ) -> dict[str, Any]:
    return {"name": name, "description": description, "violations": violations,
            "examples": examples or [], "ok": violations == 0}


class DrillRunner:
    def __init__(self, drill: Drill, ep: Endpoints, probes: dict[str, Probe], *,
                 seed: int = 1) -> None:
        self.drill = drill
        self.ep = ep
        self.probes = probes
        self.rng = random.Random(seed)
        self.journal: list[dict[str, Any]] = []
        self.t0 = time.monotonic()
        self.wall_t0 = time.time()
        self.method: asyncio.Task[None] | None = None
        self.steady_before: list[dict[str, Any]] = []
        self.steady_after: list[dict[str, Any]] = []
        self.aborted: dict[str, Any] | None = None
        self.settled = False
        self.ended_at: float | None = None  # monotonic, once the method and rollbacks are done

    def note(self, kind: str, name: str, *, at: float | None = None, **details: Any) -> None:
        """Journal an event at `at` (monotonic; default now)."""
        t = time.monotonic() if at is None else at
        self.journal.append({"t_s": round(t - self.t0, 3), "kind": kind, "name": name,
                             **details})

    async def check_steady_state(self, *, wait_s: float = 0.0) -> list[dict[str, Any]]:
        """Every probe must hold; after the faults they get up to `wait_s` to recover."""
        deadline = time.monotonic() + wait_s
        while True:
            results = []
            for spec in self.drill.steady_state:
                probe = self.probes.get(spec["probe"])
                if probe is None:
                    raise DrillError(f"unknown probe {spec['probe']!r}")
                r = await probe(spec)
                results.append({"probe": spec["probe"], "ok": r.ok, "found": r.found,
                                "expected": r.expected, "why": r.why})
            if all(r["ok"] for r in results) or time.monotonic() >= deadline:
                return results
            await asyncio.sleep(1.0)  # probes are polled while the system recovers

    async def _apply(self, step: Step) -> Any:
        return await action_named(step.action).apply(self.ep, self.rng, dict(step.args))

    async def _heal(self, step: Step, applied: Any) -> None:
        undo = action_named(step.action).heal
        if undo is None:
            return
        result = await undo(self.ep, dict(step.args), applied)
        if result:
            self.note("heal", step.action, result=result)

    async def _run_step(self, step: Step) -> None:
        for i in range(step.repeat):
            start = self.t0 + step.at_s + i * (step.every_s or 0)
            await asyncio.sleep(max(0.0, start - time.monotonic()))  # the drill's timeline
            began = time.monotonic()
            try:
                applied = await self._apply(step)
            except (ActionError, KeyError) as exc:
                self.note("error", step.action, error=str(exc), args=step.args)
                continue
            if action_named(step.action).timed_by_result:
                # its window: from the stop until the store answered again
                self.note("fault", step.action, at=began, args=step.args, result=applied,
                          duration_s=applied["down_s"])
            else:
                self.note("fault", step.action, args=step.args, result=applied,
                          duration_s=step.duration_s)
            if step.duration_s:
                await asyncio.sleep(step.duration_s)  # the fault lasts this long
                await self._heal(step, applied)

    async def run_method(self) -> None:
        """The timed faults; an abort probe that fails stops them. Rollbacks always run."""
        self.t0 = time.monotonic()
        steps = asyncio.gather(*(self._run_step(s) for s in self.drill.method))
        watch = asyncio.create_task(self._watch_abort())
        try:
            done, _ = await asyncio.wait({steps, watch}, return_when=asyncio.FIRST_COMPLETED)
            if watch in done and self.aborted is not None:
                steps.cancel()
                self.note("abort", self.aborted["probe"], found=self.aborted["found"],
                          why=self.aborted["why"])
            await asyncio.gather(steps, return_exceptions=True)
        finally:
            watch.cancel()
            await asyncio.gather(watch, return_exceptions=True)
            await self.rollback()
            self.ended_at = time.monotonic()

    async def _watch_abort(self) -> None:
        """Check the abort probes every second while the method runs."""
        if not self.drill.abort:
            return
        while True:
            for spec in self.drill.abort:
                probe = self.probes.get(spec["probe"])
                if probe is None:
                    raise DrillError(f"unknown probe {spec['probe']!r}")
                r = await probe(spec)
                if not r.ok:
                    self.aborted = {"probe": spec["probe"], "found": r.found,
                                    "expected": r.expected, "why": r.why,
                                    "t_s": round(time.monotonic() - self.t0, 3)}
                    return
            await asyncio.sleep(1.0)  # the probing period

    async def rollback(self) -> None:
        """Always: heal every proxy and resume every paused worker."""
        steps: tuple[tuple[str, Callable[[], Awaitable[Any]]], ...] = (
            ("heal", lambda: actions.heal(self.ep)),
            ("resume_workers", lambda: actions.resume_workers(self.ep)))
        for name, step in steps:  # each tried even when the one before failed
            try:
                self.note("rollback", name, result=await step())
            except (ActionError, OSError, httpx.HTTPError) as exc:
                self.note("rollback", name, error=str(exc))

    # -- the whole drill ----------------------------------------------------------------------
    async def begin(self) -> None:
        """Check the steady state, then start the method (it runs until `conclude`)."""
        self.steady_before = await self.check_steady_state()
        self.wall_t0 = time.time()
        self.method = asyncio.create_task(self.run_method())

    @property
    def method_done(self) -> bool:
        return self.method is None or self.method.done()

    async def settle(self, *, after_s: float = 0.0) -> None:
        """Wait for the method and `after_s` more, then give the system up to `settle_s` to
        return to its steady state (a run keeps its load going all the while)."""
        if self.method is not None:
            await self.method
        await asyncio.sleep(after_s)  # the load after the last fault, on the drill's timeline
        self.steady_after = await self.check_steady_state(wait_s=self.drill.settle_s)
        self.settled = True

    async def conclude(self, pool: Any, dispatch: Any, invariants: list[dict[str, Any]],
                       *, heartbeat_ttl_s: float,
                       extra: list[dict[str, Any]] | None = None) -> DrillReport:
        """Settle (unless done already) and judge: the drill's checks, the `invariants` given
        and any `extra` checks of the caller's (one pass rule)."""
        if not self.settled:
            await self.settle()
        windows = fault_windows(self.journal, 0.0)
        checks = [
            _check("drill_not_aborted", "no abort probe failed during the method",
                   0 if self.aborted is None else 1,
                   [] if self.aborted is None else [
                       f"{self.aborted['t_s']} s into the method: " + probe_failures(
                           [{**self.aborted, "ok": False}])[0]]),
            _check("steady_state_before", "probes held before the faults",
                   sum(not r["ok"] for r in self.steady_before),
                   probe_failures(self.steady_before)),
            _check("steady_state_after", "probes held again after the faults (within "
                   f"settle_s {self.drill.settle_s:g} s)",
                   sum(not r["ok"] for r in self.steady_after),
                   probe_failures(self.steady_after)),
            _check("no_replacement_storm", "no worker replaced for a stale heartbeat while a "
                   "store it heartbeats to was partitioned or restarted",
                   await self.replacement_storm(pool, windows, heartbeat_ttl_s)),
        ]
        turned = [t["worker_id"] for j in self.journal if j["kind"] == "fault"
                  and j["name"] == "byzantine_workers" for t in j["result"]["byzantine"]]
        quarantined = await self.quarantined(pool)
        wrong = sorted(f"{w} was quarantined and never turned" for w in quarantined - set(turned))
        checks.append(_check("honest_not_quarantined", "no worker the drill left honest was "
                             "quarantined", len(wrong), wrong))
        if turned:
            left = [f"{w} is not quarantined" for w in turned if w not in quarantined]
            checks.append(_check("byzantine_quarantined", "every worker turned Byzantine was "
                                 "quarantined", len(left), left))
        try:
            stale: int | None = (await dispatch.event_counts()).get("stale_rejected", 0)
        except DispatchUnavailable:
            stale = None
        return DrillReport(name=self.drill.name, journal=self.journal,
                           steady_before=self.steady_before, steady_after=self.steady_after,
                           windows=windows, checks=[*invariants, *checks, *(extra or [])],
                           zombie_results_rejected=stale)

    @staticmethod
    async def quarantined(pool: Any) -> set[str]:
        """The quarantined workers (one that could not be read: a check fails on its name)."""
        try:
            return {r["id"] for r in await pool.fetch(QUARANTINED)}
        except StoreUnavailable:
            return {"(workers could not be read)"}

    async def replacement_storm(self, pool: Any, windows: list[dict[str, Any]],
                     heartbeat_ttl_s: float) -> int:
        """Workers replaced for a stale heartbeat while a store named in
        `expect_no_replacement_during` was away (and one heartbeat TTL after)."""
        storm = 0
        for w in windows:
            if w["name"] not in ("partition", "restart_store") or \
                    w["args"].get("target") not in self.drill.expect_no_replacement_during:
                continue
            try:
                storm += int(await pool.fetchval(
                    HEARTBEAT_REPLACEMENTS, self.wall_t0 + w["start_s"],
                    self.wall_t0 + w["end_s"] + heartbeat_ttl_s))
            except StoreUnavailable:
                storm += 1  # cannot tell: not a pass
        return storm
