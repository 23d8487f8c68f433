"""Gradual faults injected into a running worker, for drills that train and test the
worker-failure predictor. A worker has no fault until told: its supervisor writes a spec to
`<data_dir>/faults/<worker_id>.json` and sends SIGUSR1; the worker reads it and starts the
fault in its own event loop. The fatal modes ramp over `ramp_s` seconds and end in a failure:

- ``leak``: memory grows linearly to `limit_mb`, then the process is killed with SIGKILL (what
  a container's memory limit and the kernel's OOM killer do);
- ``slow``: the event loop is blocked for a growing share of every second (CPU-bound work
  creeping in), until it hangs for good and misses its heartbeats;
- ``stall``: stalls of growing length at random moments (lock contention, GC pauses, a flaky
  dependency), until one never ends.

After the ramp a hung worker stays hung (it cannot drain) until its supervisor kills it.

The benign modes show symptoms for `ramp_s` seconds and end without a failure (a predictor
that reads every symptom as the end is wrong on them):

- ``plateau``: memory grows to `limit_mb` and stays there (a cache warming up);
- ``transient``: stalls as in ``stall``, then they stop (a dependency that recovers);
- ``gc``: short pauses (50-250 ms) every 1-3 s, then none (a collector working hard);
- ``neighbour``: a busy thread competes for the interpreter (a noisy neighbour), then stops.

The Byzantine modes turn the worker's job loop into a liar for the rest of its life (its
heartbeats stay honest, so only the evidence gives it away):

- ``forge``: completions carry a lease token no lease ever had (the job is not completed);
- ``idle``: it leases jobs and forgets them: never runs them, never extends their leases;
- ``liar``: it also takes jobs of `capability`, which it has no handler for.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import signal
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

log = logging.getLogger("jobharness.faults")
FATAL_MODES = ("leak", "slow", "stall")
BENIGN_MODES = ("plateau", "transient", "gc", "neighbour")
BYZANTINE_MODES = ("forge", "idle", "liar")
MODES = FATAL_MODES + BENIGN_MODES + BYZANTINE_MODES
TICK_S = 0.25


@dataclass(frozen=True, kw_only=True)
class FaultSpec:
    mode: str
    ramp_s: float = 45.0
    limit_mb: float = 400.0  # leak: the memory limit that ends it
    seed: int | None = None
    capability: str = "gpu"  # liar: the capability it claims without serving it

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"fault mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if not 5 <= self.ramp_s <= 3600:
            raise ValueError(f"ramp_s must be between 5 and 3600, got {self.ramp_s}")
        if not 50 <= self.limit_mb <= 16384:
            raise ValueError(f"limit_mb must be between 50 and 16384, got {self.limit_mb}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FaultSpec:
        unknown = set(data) - {"mode", "ramp_s", "limit_mb", "seed", "capability"}
        if unknown:
            raise ValueError(f"unknown fault fields: {', '.join(sorted(unknown))}")
        if "mode" not in data:
            raise ValueError("a fault needs a mode")
        return cls(**data)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def fault_path(data_dir: Path, worker_id: str) -> Path:
    return data_dir / "faults" / f"{worker_id}.json"


def write_fault(data_dir: Path, worker_id: str, spec: FaultSpec) -> Path:
    path = fault_path(data_dir, worker_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(spec.as_dict()))
    tmp.replace(path)
    return path


def _burn(stop: threading.Event, until: float) -> None:
    """A noisy neighbour inside the process: pure-Python work that holds the interpreter lock
    in short slices until `until` or `stop`."""
    while not stop.is_set() and time.monotonic() < until:
        sum(i * i for i in range(20_000))


def _block(seconds: float) -> None:
    """Hold the event loop (the fault itself: nothing else in the worker runs meanwhile)."""
    time.sleep(seconds)


class FaultInjector:
    """Lives in a worker process; SIGUSR1 starts the fault its spec file describes."""

    def __init__(self, data_dir: Path, worker_id: str, worker: Any = None) -> None:
        self.path = fault_path(data_dir, worker_id)
        self.worker = worker  # core.worker.loop.Worker: what a Byzantine mode corrupts
        self.task: asyncio.Task[None] | None = None
        self._ballast: list[bytes] = []

    def install(self) -> None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, self._start)

    def _start(self) -> None:
        if self.task is not None:
            return  # one fault per worker life
        try:
            spec = FaultSpec.from_dict(json.loads(self.path.read_text()))
        except (OSError, ValueError, TypeError) as exc:
            log.error("fault signal ignored: %s", exc)
            return
        log.warning("fault injected: %s", spec.as_dict())
        self.task = asyncio.create_task(self.run(spec))

    async def run(self, spec: FaultSpec) -> None:
        if spec.mode in BYZANTINE_MODES:
            if self.worker is not None:
                self.worker.byzantine = spec.mode
                if spec.mode == "liar":
                    self.worker.capabilities = (*self.worker.capabilities, spec.capability)
            return
        if spec.mode in BENIGN_MODES:
            await self._benign(spec)
            log.warning("fault %s: over, the worker recovers", spec.mode)
            return
        rng = random.Random(spec.seed)
        start = time.monotonic()
        base_mb = psutil.Process().memory_info().rss / 2**20
        # the first stall comes within the first quarter of the ramp (at most 3 s), so a stall
        # fault always shows stalls before it hangs for good
        next_stall = start + rng.uniform(0.5, min(3.0, spec.ramp_s / 4))
        while True:
            progress = (time.monotonic() - start) / spec.ramp_s
            if spec.mode == "leak":
                self._leak(spec, base_mb, min(progress, 1.0))
            elif progress >= 1.0:
                log.warning("fault %s: hanging for good", spec.mode)
                while True:
                    _block(1.0)  # the loop is gone: no heartbeat, no drain
            elif spec.mode == "slow":
                _block(TICK_S * 3.0 * progress**2)
            elif time.monotonic() >= next_stall:
                _block(rng.uniform(0.1, 0.3 + 2.5 * progress))
                mean_gap = max(0.5, 3.0 * (1 - progress))
                next_stall = time.monotonic() + rng.expovariate(1 / mean_gap)
            await asyncio.sleep(TICK_S)

    async def _benign(self, spec: FaultSpec) -> None:
        rng = random.Random(spec.seed)
        start = time.monotonic()
        end = start + spec.ramp_s
        base_mb = psutil.Process().memory_info().rss / 2**20
        busy = threading.Event()
        if spec.mode == "neighbour":
            threading.Thread(target=_burn, args=(busy, end), daemon=True).start()
        next_pause = start + rng.uniform(0.2, 1.0)
        while (now := time.monotonic()) < end:
            progress = (now - start) / spec.ramp_s
            if spec.mode == "plateau":
                self._grow(spec, base_mb, min(1.0, 2 * progress))  # full by half time
            elif spec.mode in ("transient", "gc") and now >= next_pause:
                stall = spec.mode == "transient"
                _block(rng.uniform(0.1, 0.3 + 1.5 * progress) if stall
                       else rng.uniform(0.05, 0.25))
                next_pause = time.monotonic() + (rng.expovariate(1 / 1.5) if stall
                                                 else rng.uniform(1.0, 3.0))
            await asyncio.sleep(TICK_S)
        busy.set()

    def _grow(self, spec: FaultSpec, base_mb: float, progress: float) -> None:
        grow_mb = int((spec.limit_mb - base_mb) * progress) - len(self._ballast)
        for _ in range(max(0, grow_mb)):
            self._ballast.append(os.urandom(1) * 2**20)  # written, so it is resident

    def _leak(self, spec: FaultSpec, base_mb: float, progress: float) -> None:
        self._grow(spec, base_mb, progress)
        if psutil.Process().memory_info().rss / 2**20 >= spec.limit_mb or progress >= 1.0:
            log.error("fault leak: memory limit %.0f MiB reached, killed", spec.limit_mb)
            os.kill(os.getpid(), signal.SIGKILL)
