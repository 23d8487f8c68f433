"""`jobharness supervisor`: spawns N worker processes, watches them, replaces the dead.
Length: one class holds the watch loop and every way a worker is replaced (exited, stale,
predicted, quarantined, draining, abandoned): they share one rate limit and one roster.

A worker is dead when its process exits, or when its heartbeat is stale in *both* stores (the
Redis key expired or Redis unreachable, and `last_heartbeat_at` older than the TTL or
PostgreSQL unreachable). Nothing is decided with both stores unreachable (a store outage alone
never triggers replacement, invariant 5), nor for a TTL after the supervisor itself was away
for longer than one (vigil.py). Replacement marks the old worker FAILED with the reason and
fails its leases as an attempt (QUARANTINED for a misbehaving one, byzantine.py, whose leases
go back with no retry spent), asks a live process to exit (SIGTERM, SIGKILL after
`zombie_grace_s`), starts one in its slot and group (groups.py); `max_replacements` a window.

With a predictor (predictor/), every live worker is also scored each round; a worker the
policy flags is replaced proactively: its successor starts first, then the old worker drains
(SIGTERM), and is killed past the drain timeout. Held-out workers are scored and logged only.
The predictor shares the rate limit and has guards of its own (storm.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import DispatchUnavailable, StoreUnavailable
from core.service.jobs import JobService
from core.service.reconciler import Reconciler
from core.settings import Settings, check_nice, to_env
from core.supervisor.byzantine import misbehaving
from core.supervisor.crashloop import CrashLoop
from core.supervisor.groups import WorkerGroup, group_of
from core.supervisor.processes import SPAWN_MODES, Child, start_worker
from core.supervisor.roster import RosterEntry, load_roster, retire, save_roster
from core.supervisor.scoring import Predictor
from core.supervisor.storm import StormGuard, StormLimits
from core.supervisor.vigil import Vigil
from core.worker.clock import skew_from_env
from core.worker.faults import FaultSpec, write_fault
from core.worker.process import WorkerOptions

log = logging.getLogger("jobharness.supervisor")


@dataclass(frozen=True, kw_only=True)
class SupervisorOptions:
    workers: int
    name: str = "sup"
    capabilities: tuple[str, ...] = ()
    concurrency: int = 1
    prefetch: int = 0  # jobs each worker leases ahead of its free slots (core/worker/loop.py)
    handlers: Mapping[str, str] = field(default_factory=dict)
    check_interval_s: float = 1.0
    startup_grace_s: float = 30.0
    max_replacements: int = 20
    replacement_window_s: float = 10.0
    zombie_grace_s: float = 60.0
    drain_timeout_s: float = 10.0
    reconcile_interval_s: float | None = 2.0  # None: another process runs the reconciler
    log_dir: Path | None = None
    spawn: str = "forkserver"  # or "exec": a fresh `jobharness worker` interpreter each
    # Workers' niceness above the supervisor's: 10 lets the API and stores on the same machine
    # answer first, the workers then batch more (phase2, 2 cores: 296 -> 484 jobs/s).
    worker_nice: int = 0
    storm: StormLimits | None = None  # proactive guards; None: one per worker per hour, >= 4
    groups: tuple[WorkerGroup, ...] = ()  # slot i in groups[i % n]: own store URLs, clock

    def __post_init__(self) -> None:
        if self.spawn not in SPAWN_MODES:
            raise ValueError(f"spawn must be one of {', '.join(SPAWN_MODES)}")
        if not 1 <= self.workers <= 1000:
            raise ValueError("workers must be between 1 and 1000")
        if self.max_replacements < 1 or self.replacement_window_s <= 0:
            raise ValueError("replacement limits must be positive")
        check_nice(self.worker_nice, "worker_nice")


@dataclass
class Slot:
    index: int
    generation: int
    worker_id: str
    proc: Child
    spawned_at: float
    paused: bool = False
    fault: str | None = None  # a gradual fault injected by a drill
    group: str | None = None


class Supervisor:
    def __init__(self, service: JobService, settings: Settings, opts: SupervisorOptions,
                 predictor: Predictor | None = None) -> None:
        self.service = service
        self.settings = settings
        self.opts = opts
        self.slots: dict[int, Slot] = {}
        self.abandoned: list[tuple[Child, float, str]] = []
        self.draining: list[tuple[Child, float, str]] = []  # proactively replaced
        # held-out workers the predictor flagged: how they really end measures its precision
        self._held_flagged: set[str] = set()
        self.predictor = predictor
        self.stats: Counter[str] = Counter()
        self.events: list[dict[str, Any]] = []  # replacement journal
        self._recent: deque[float] = deque()
        self._pending: dict[int, str] = {}  # slot -> reason, waiting for the rate limiter
        self.log_dir = opts.log_dir or (settings.data_dir / "logs")
        self.roster_source = "none"
        self._retiring: asyncio.Task[None] | None = None
        self.storm = StormGuard(opts.storm or StormLimits(per_hour=max(4, opts.workers)))
        self.crash_loop = CrashLoop()  # restarts of a slot dying at once, held back
        self.vigil = Vigil(settings.heartbeat_ttl_s, self.stats)  # after a gap of its own

    # -- processes --------------------------------------------------------------------------
    def worker_id(self, index: int, generation: int) -> str:
        return f"{self.opts.name}-{index:03d}-g{generation}"

    async def _spawn(self, index: int, generation: int) -> Slot:
        wid = self.worker_id(index, generation)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        o = self.opts
        group = group_of(o.groups, index)
        env = {**os.environ, **to_env(self.settings), **(group.env if group else {})}
        spec = WorkerOptions(worker_id=wid, capabilities=o.capabilities, handlers=dict(o.handlers),
                             concurrency=o.concurrency, prefetch=o.prefetch, supervisor=o.name,
                             drain_timeout_s=o.drain_timeout_s, nice=o.worker_nice,
                             clock_skew_s=skew_from_env(env))
        proc = await start_worker(spec, env, self.log_dir / f"{wid}.log", how=o.spawn)
        slot = Slot(index=index, generation=generation, worker_id=wid, proc=proc,
                    spawned_at=time.monotonic(), group=group.name if group else None)
        self.slots[index] = slot
        return slot

    async def start(self) -> None:
        """Read the last roster (a restart), start the next generation in every slot, and
        retire what a previous supervisor left running."""
        source, previous = await load_roster(self.service, self.opts.name)
        self.roster_source = source
        last_gen = {e.slot: e.generation for e in previous}
        await asyncio.gather(*(self._spawn(i, last_gen[i] + 1 if i in last_gen else 0)
                               for i in range(self.opts.workers)))
        self._save_roster()
        if previous:
            self.stats["workers_inherited"] += len(previous)
            self._retiring = asyncio.create_task(retire(
                self.service, previous, self.opts.drain_timeout_s + 5, self.stats))

    def _save_roster(self) -> None:
        save_roster(self.service, self.opts.name, [
            RosterEntry(slot=s.index, generation=s.generation, worker_id=s.worker_id,
                        pid=s.proc.pid, hostname=socket.gethostname())
            for s in self.slots.values()])

    # -- watching ---------------------------------------------------------------------------
    async def check(self) -> None:
        """One round: exited processes, stale heartbeats, deferred replacements, zombies."""
        self.stats["checks"] += 1
        for slot in list(self.slots.values()):
            code = slot.proc.returncode
            if code is not None and not self.crash_loop.hold(
                    slot.index, slot.worker_id, slot.spawned_at, time.monotonic()):
                how = f"killed by signal {-code}" if code < 0 else f"exited with code {code}"
                self.stats["process_deaths"] += 1
                await self._replace(slot, f"process {how}")
        if self.crash_loop.backoffs:
            self.stats["crash_loop_backoffs"] = self.crash_loop.backoffs
        for slot, reason in await self._stale_heartbeats():
            self.stats["heartbeat_timeouts"] += 1
            await self._replace(slot, reason)
        live = self._live()
        for wid, reason in await misbehaving(self.service, list(live), self.stats):
            log.warning("quarantining %s, %s", wid, reason)
            await self._replace(live[wid], reason, status="QUARANTINED")
        for index, reason in list(self._pending.items()):
            if index in self.slots:
                await self._replace(self.slots[index], reason)
        if self.predictor is not None:
            await self._predict(self.predictor)
        self._reap_zombies()
        await self._reap_draining()

    async def _stale_heartbeats(self) -> list[tuple[Slot, str]]:
        live = [s for s in self.slots.values()
                if s.proc.returncode is None and s.index not in self._pending]
        if not live:
            return []
        ids = [s.worker_id for s in live]
        started = time.monotonic()
        try:
            in_redis: dict[str, bool] | None = await self.service.dispatch.heartbeats_exist(ids)
        except DispatchUnavailable:
            in_redis = None
        try:
            ages: dict[str, float | None] | None = await self.service.heartbeat_ages(ids)
        except StoreUnavailable:
            ages = None
        now = time.monotonic()
        if not self.vigil.look(started, now) or (in_redis is None and ages is None):
            return []  # not watching of late (vigil.py), or both stores down: nothing judged
        ttl = self.settings.heartbeat_ttl_s
        dead = []
        for s in live:
            if in_redis is not None and in_redis.get(s.worker_id):
                continue
            age = ages.get(s.worker_id) if ages is not None else None
            if ages is not None and age is not None and age <= ttl:
                continue
            if age is None and now - s.spawned_at < max(self.opts.startup_grace_s, ttl):
                continue  # not registered yet
            redis_state = "unreachable" if in_redis is None else "expired"
            pg_state = "unreachable" if ages is None else (
                "never registered" if age is None else f"{age:.1f} s old")
            dead.append((s, f"heartbeat timed out (redis key {redis_state}, "
                            f"postgres heartbeat {pg_state})"))
        return dead

    def _allowed(self) -> bool:
        now = time.monotonic()
        while self._recent and now - self._recent[0] > self.opts.replacement_window_s:
            self._recent.popleft()
        return len(self._recent) < self.opts.max_replacements

    async def _replace(self, slot: Slot, reason: str, status: str = "FAILED") -> None:
        if status == "QUARANTINED":  # no more leases at once, whatever the rate limit says
            await self.service.quarantine_worker(slot.worker_id, reason)
        if not self._allowed():
            if slot.index not in self._pending:
                self.stats["replacements_deferred"] += 1
            self._pending[slot.index] = reason
            return
        self._pending.pop(slot.index, None)
        self._recent.append(time.monotonic())
        if slot.worker_id in self._held_flagged:
            self.stats["held_out_flagged_failed"] += 1
        self.storm.failed(slot.worker_id)
        if slot.proc.returncode is None:  # hung, paused or partitioned: ask it to go
            with contextlib.suppress(ProcessLookupError):
                slot.proc.send_signal(signal.SIGTERM)
            self.abandoned.append((slot.proc, time.monotonic() + self.opts.zombie_grace_s,
                                   slot.worker_id))
        released = 0
        with contextlib.suppress(StoreUnavailable):
            await self.service.deregister_worker(slot.worker_id, status=status, reason=reason)
            released = await self.service.release_worker(
                slot.worker_id, f"worker lost: {reason}", spend_retry=status != "QUARANTINED")
        new = await self._spawn(slot.index, slot.generation + 1)
        self._save_roster()
        self.stats["replacements"] += 1
        self.events.append({"at": time.time(), "old": slot.worker_id, "new": new.worker_id,
                            "reason": reason, "released_jobs": released})
        log.warning("replaced %s with %s: %s (%d leases released)", slot.worker_id,
                    new.worker_id, reason, released)

    # -- prediction ---------------------------------------------------------------------------
    def _live(self) -> dict[str, Slot]:
        return {s.worker_id: s for s in self.slots.values()
                if s.proc.returncode is None and s.index not in self._pending}

    async def _predict(self, predictor: Predictor) -> None:
        live = self._live()
        try:
            now = await predictor.refresh(self.service.pool, list(live))
            verdicts = predictor.score(now)
        except Exception as exc:  # the predictor must never stop the supervisor
            self.stats["predictor_errors"] += 1
            log.warning("predictor round failed: %s", exc)
            return
        failing = sum(1 for v in verdicts if v.verdict == "failing" and v.worker_id in live)
        hold = self.storm.fleetwide(failing, len(live))
        for v in verdicts:
            self.stats[f"verdict_{v.verdict}"] += 1
            slot = live.get(v.worker_id)
            if not v.fire or slot is None:
                continue
            if hold and not v.held_out:  # the fleet looks sick at once: not the workers
                self.stats["proactive_fleetwide"] += 1
                self.storm.watch(v.worker_id, time.monotonic())
                predictor.note_action(now, v.worker_id, "fleetwide")
                continue
            if v.held_out:
                self.stats["predicted_held_out"] += 1
                if v.worker_id not in self._held_flagged:
                    self._held_flagged.add(v.worker_id)
                    self.stats["held_out_flagged"] += 1
                self.storm.watch(v.worker_id, time.monotonic())
                continue
            await self._replace_proactively(predictor, slot, v, now)
        for name, n in self.storm.counters().items():
            self.stats[name] = n

    async def _replace_proactively(self, predictor: Predictor, slot: Slot, v: Any,
                                   now: float) -> None:
        # a model gone wrong must not churn the fleet: at most a tenth of it draining at once,
        # a budget per hour, and a breaker when its judged firings were mostly false
        clock = time.monotonic()
        held = self.storm.check(clock) or ("deferred" if not self._allowed() or len(
            self.draining) >= max(1, self.opts.workers // 10) else None)
        if held is not None:
            self.stats["proactive_deferred" if held == "deferred" else f"proactive_{held}"] += 1
            self.storm.watch(slot.worker_id, clock)
            predictor.note_action(now, slot.worker_id, held)
            return
        self._recent.append(clock)
        self.storm.replaced(clock)
        reason = f"predicted failing (p={v.p_failing:.2f})"
        new = await self._spawn(slot.index, slot.generation + 1)  # the successor first
        with contextlib.suppress(ProcessLookupError):
            slot.proc.send_signal(signal.SIGTERM)  # then the old one drains
        self.draining.append((slot.proc, time.monotonic() + self.opts.drain_timeout_s + 5,
                              slot.worker_id))
        predictor.note_action(now, slot.worker_id, "replace")
        predictor.forget(slot.worker_id)
        self._save_roster()
        self.stats["proactive_replacements"] += 1
        self.events.append({"at": time.time(), "old": slot.worker_id, "new": new.worker_id,
                            "reason": reason, "released_jobs": 0, "proactive": True})
        log.warning("replaced %s with %s before it fails: %s", slot.worker_id, new.worker_id,
                    reason)

    async def _reap_draining(self) -> None:
        """Drained workers deregister themselves; one that died or overran is failed here."""
        now = time.monotonic()
        keep = []
        for proc, deadline, wid in self.draining:
            code = proc.returncode
            if code is None and now < deadline:
                keep.append((proc, deadline, wid))
                continue
            if code == 0:
                continue
            self.storm.drain_failed()
            if code is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                reason = "drain after a predicted failure timed out"
                self.stats["drains_killed"] += 1
            else:
                reason = f"process {'killed by signal ' + str(-code) if code < 0 else code} " \
                         "while draining"
            with contextlib.suppress(StoreUnavailable):
                await self.service.deregister_worker(wid, status="FAILED", reason=reason)
                await self.service.release_worker(wid, f"worker lost: {reason}")
        self.draining = keep

    def _reap_zombies(self) -> None:
        now = time.monotonic()
        keep = []
        for proc, deadline, wid in self.abandoned:
            if proc.returncode is not None:
                continue
            if now >= deadline:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                self.stats["zombies_killed"] += 1
                log.warning("killed %s: still running %.0f s after replacement", wid,
                            self.opts.zombie_grace_s)
                continue
            keep.append((proc, deadline, wid))
        self.abandoned = keep

    async def run(self, stop: asyncio.Event) -> None:
        """Watch until `stop` is set, then stop every worker."""
        every = self.opts.reconcile_interval_s
        reconciler = asyncio.create_task(Reconciler(self.service).run(stop, every)) if every \
            else None
        try:
            while not stop.is_set():
                try:
                    await self.check()
                except (StoreUnavailable, DispatchUnavailable):
                    # logged once per outage by the pool / breaker; nothing is decided on
                    # what could not be read, and the next round tries again
                    self.stats["checks_store_unavailable"] += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=self.opts.check_interval_s)
        finally:
            stop.set()
            if self._retiring is not None:
                await self._retiring
            await self.shutdown()
            if self.predictor is not None:
                self.predictor.close()
            if reconciler:
                await reconciler

    async def shutdown(self) -> None:
        procs = [s.proc for s in self.slots.values()] + \
            [p for p, _, _ in self.abandoned + self.draining]
        for proc in procs:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGCONT)  # a paused worker cannot drain
                    proc.send_signal(signal.SIGTERM)
        waits = [asyncio.wait_for(p.wait(), self.opts.drain_timeout_s + 5) for p in procs]
        for proc, res in zip(procs, await asyncio.gather(*waits, return_exceptions=True),
                             strict=True):
            if isinstance(res, BaseException):
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()

    # -- control surface --------------------------------------------------------------------
    def find(self, worker_id: str) -> Slot | None:
        return next((s for s in self.slots.values() if s.worker_id == worker_id), None)

    def signal_worker(self, worker_id: str, action: str) -> int:
        """kill (SIGKILL), terminate (SIGTERM), pause (SIGSTOP) or resume (SIGCONT)."""
        sig = {"kill": signal.SIGKILL, "terminate": signal.SIGTERM,
               "pause": signal.SIGSTOP, "resume": signal.SIGCONT}[action]
        slot = self.find(worker_id)
        proc = slot.proc if slot else next(
            (p for p, _, w in self.abandoned + self.draining if w == worker_id), None)
        if proc is None or proc.returncode is not None:
            raise LookupError(f"no running worker {worker_id!r}")
        proc.send_signal(sig)
        if slot is not None:
            slot.paused = action == "pause" or (slot.paused and action != "resume")
        self.stats[f"control_{action}"] += 1
        return proc.pid

    def inject_fault(self, worker_id: str, spec: FaultSpec) -> int:
        """Start a gradual fault in a running worker (drills): spec file, then SIGUSR1."""
        slot = self.find(worker_id)
        if slot is None or slot.proc.returncode is not None:
            raise LookupError(f"no running worker {worker_id!r}")
        if slot.fault is not None:
            raise LookupError(f"worker {worker_id!r} already has a {slot.fault} fault")
        write_fault(self.settings.data_dir, worker_id, spec)
        slot.proc.send_signal(signal.SIGUSR1)
        slot.fault = spec.mode
        self.stats["control_degrade"] += 1
        return slot.proc.pid

    def describe(self) -> list[dict[str, Any]]:
        caps = list(self.opts.capabilities)
        out = [{"worker_id": s.worker_id, "slot": s.index, "generation": s.generation,
                "pid": s.proc.pid, "state": "exited" if s.proc.returncode is not None else (
                    "paused" if s.paused else "running"), "fault": s.fault, "group": s.group,
                "capabilities": caps} for s in sorted(self.slots.values(), key=lambda s: s.index)]
        for state, procs in (("abandoned", self.abandoned), ("draining", self.draining)):
            out += [{"worker_id": wid, "slot": None, "generation": None, "pid": proc.pid,
                     "state": state, "capabilities": caps} for proc, _, wid in procs]
        return out
