"""A worker loop's own CPU per job, with the stores taken out: a stand-in job service that
leases from a list and records outcomes at once, so what is measured is the loop (slots,
tasks, timeouts, lease keepers, reports) and nothing else:

    .venv/bin/python benchmarks/worker_overhead.py --jobs 50000 --slots 100 --rounds 5

Prints the CPU time per job (`time.process_time`, so a busy machine inflates it less than
wall time) of each round and their median. Used for the worker loop's A/B in
docs/performance.md; the real drain is measured by benchmarks/drain_cpu.py and compare.py."""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import uvloop

from core.jobs.model import Lease
from core.service.completing import Reported
from core.worker.loop import Worker


class InstantService:
    """Leases `jobs` no-op jobs, as many as asked per call; every report returns at once."""

    def __init__(self, jobs: int) -> None:
        self.settings = SimpleNamespace(lease_s=30.0)
        self.left = jobs
        self.issued = 0
        self.completed = 0
        self.done = asyncio.Event()
        self.total = jobs

    async def acquire_many(self, worker_id: str, n: int, capabilities: Any, *,
                           lease_s: float) -> list[Lease]:
        await asyncio.sleep(0)  # a store call yields to the loop at least once
        n = min(n, self.left)
        self.left -= n
        start, self.issued = self.issued, self.issued + n
        return [Lease(job_id=f"job-{i}", token=i + 1, attempt=1, job_type="noop", payload={},
                      priority=3, timeout_s=10.0, lease_s=lease_s, worker_id=worker_id,
                      via="redis") for i in range(start, start + n)]

    async def report_and_acquire(self, worker_id: str, n: int, capabilities: Any,
                                 done: list[tuple[str, int, Any]], *,
                                 lease_s: float) -> Reported:
        """A small worker's successes riding with its next lease (loop.py's carry path)."""
        for _ in done:
            self._completed()
        leases = await self.acquire_many(worker_id, n, capabilities, lease_s=lease_s)
        return Reported(leases=leases, outcomes=[None] * len(done))

    async def send_forgets(self) -> None:
        return None

    async def wait_for_work(self, timeout_s: float) -> None:
        await self.done.wait()

    def _completed(self) -> None:
        self.completed += 1
        if self.completed == self.total:
            self.done.set()

    async def complete(self, job_id: str, token: int, result: Any = None, *,
                       worker_id: str | None = None) -> None:
        await asyncio.sleep(0)
        self._completed()


async def noop(payload: dict[str, Any]) -> None:
    return None


async def one_round(jobs: int, slots: int) -> tuple[float, float]:
    service = InstantService(jobs)
    worker = Worker(service, "bench", {"noop": noop}, concurrency=slots)  # type: ignore[arg-type]
    stop = asyncio.Event()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    running = asyncio.create_task(worker.run(stop))
    finished = asyncio.create_task(service.done.wait())
    await asyncio.wait({running, finished}, return_when=asyncio.FIRST_COMPLETED)
    if not finished.done():  # the loop ended before its jobs did: say why, do not wait
        finished.cancel()
        await running
        raise SystemExit(f"the worker loop stopped after {service.completed} of {jobs} jobs")
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    stop.set()
    await running
    return cpu / jobs * 1e6, jobs / wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=50_000)
    ap.add_argument("--slots", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    if args.jobs < 1 or args.slots < 1 or args.rounds < 1:
        raise SystemExit("--jobs, --slots and --rounds must be at least 1")
    cpu = []
    for r in range(args.rounds):
        us, rate = uvloop.run(one_round(args.jobs, args.slots))
        cpu.append(us)
        print(f"round {r + 1}: {us:.1f} us of CPU per job ({rate:,.0f} jobs/s)")
    print(f"median: {statistics.median(cpu):.1f} us of CPU per job "
          f"({args.jobs} jobs, {args.slots} slots, {args.rounds} rounds)")


if __name__ == "__main__":
    main()
