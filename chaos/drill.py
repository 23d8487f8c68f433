"""Drills, modelled on Chaos Toolkit's experiments: a steady-state hypothesis (probes checked
before and after), a timed method (actions at offsets, repeated, victims drawn with a seed),
and rollbacks that always run (every proxy healed, every paused worker resumed). Everything
done is written to a journal with its time since the drill started.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from chaos import actions
from chaos.actions import ActionError, Endpoints

DRILL_DIR = Path(__file__).parent / "drills"
ACTIONS = ("partition", "toxic", "kill_workers", "pause_workers", "resume_workers",
           "signal_process", "degrade_workers", "restart_store")
Probe = Callable[[dict[str, Any]], Awaitable[tuple[bool, Any]]]


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

    @property
    def length_s(self) -> float:
        return max((s.at_s + (s.every_s or 0) * (s.repeat - 1) + (s.duration_s or 0)
                    for s in self.method), default=0.0)


def available() -> list[str]:
    return sorted(p.stem for p in DRILL_DIR.glob("*.yaml"))


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
            raise DrillError(f"{path}: method[{i}].action must be one of {', '.join(ACTIONS)}")
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
        return Drill(method=steps, **data)
    except TypeError as exc:
        raise DrillError(f"{path}: {exc}") from exc


class DrillRunner:
    def __init__(self, drill: Drill, ep: Endpoints, probes: dict[str, Probe], *,
                 seed: int = 1) -> None:
        self.drill = drill
        self.ep = ep
        self.probes = probes
        self.rng = random.Random(seed)
        self.journal: list[dict[str, Any]] = []
        self.t0 = time.monotonic()
        self.steady_before: list[dict[str, Any]] = []
        self.steady_after: list[dict[str, Any]] = []
        self.aborted: dict[str, Any] | None = None

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
                ok, value = await probe(spec)
                results.append({"probe": spec["probe"], "ok": ok, "value": value,
                                "tolerance": {k: v for k, v in spec.items() if k != "probe"}})
            if all(r["ok"] for r in results) or time.monotonic() >= deadline:
                return results
            await asyncio.sleep(1.0)  # probes are polled while the system recovers

    async def _apply(self, step: Step) -> Any:
        args = dict(step.args)
        if step.action == "partition":
            return await actions.partition(self.ep, args["target"], args.get("mode", "hard"))
        if step.action == "toxic":
            return await actions.toxic(self.ep, args["target"], args["type"],
                                       args.get("attributes", {}),
                                       args.get("stream", "downstream"),
                                       float(args.get("toxicity", 1.0)))
        if step.action == "kill_workers":
            return await actions.kill_workers(self.ep, self.rng, count=args.get("count"),
                                              fraction=args.get("fraction"))
        if step.action == "pause_workers":
            return await actions.pause_workers(self.ep, self.rng, count=args.get("count"),
                                               fraction=args.get("fraction"))
        if step.action == "degrade_workers":
            return await actions.degrade_workers(
                self.ep, self.rng, count=args.get("count"), fraction=args.get("fraction"),
                mode=args.get("mode", "mixed"), ramp_s=args.get("ramp_s", 45.0),
                limit_mb=float(args.get("limit_mb", 400.0)))
        if step.action == "resume_workers":
            return await actions.resume_workers(self.ep)
        if step.action == "restart_store":
            return await actions.restart_store(self.ep, args["target"], args.get("mode"),
                                               float(args.get("down_s", 2.0)))
        return actions.signal_process(self.ep, args["process"], args.get("signal", "kill"))

    async def _heal(self, step: Step, applied: Any) -> None:
        if step.action in ("partition", "toxic"):
            result = await actions.heal(self.ep, step.args["target"])
        elif step.action == "pause_workers":
            result = await actions.resume_workers(self.ep, applied.get("paused"))
        elif step.action == "signal_process" and step.args.get("signal") == "pause":
            result = actions.signal_process(self.ep, step.args["process"], "resume")
        else:
            return
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
            if step.action == "restart_store":
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
                self.note("abort", self.aborted["probe"], value=self.aborted["value"])
            await asyncio.gather(steps, return_exceptions=True)
        finally:
            watch.cancel()
            await asyncio.gather(watch, return_exceptions=True)
            await self.rollback()

    async def _watch_abort(self) -> None:
        """Check the abort probes every second while the method runs."""
        if not self.drill.abort:
            return
        while True:
            for spec in self.drill.abort:
                probe = self.probes.get(spec["probe"])
                if probe is None:
                    raise DrillError(f"unknown probe {spec['probe']!r}")
                ok, value = await probe(spec)
                if not ok:
                    self.aborted = {"probe": spec["probe"], "value": value,
                                    "t_s": round(time.monotonic() - self.t0, 3)}
                    return
            await asyncio.sleep(1.0)  # the probing period

    async def rollback(self) -> None:
        """Always: heal every proxy and resume every paused worker."""
        for name, coro in (("heal", actions.heal(self.ep)),
                           ("resume_workers", actions.resume_workers(self.ep))):
            try:
                self.note("rollback", name, result=await coro)
            except (ActionError, OSError) as exc:
                self.note("rollback", name, error=str(exc))
