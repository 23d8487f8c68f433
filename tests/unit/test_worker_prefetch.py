"""A worker holding jobs leased ahead of its free slots (`prefetch`): each lease call asks for
the free slots and the room ahead; jobs held ahead start as slots free, never more running
than `concurrency`; when the worker stops, those not started go back unstarted; the lease of
a job held ahead is extended counting from when it was leased. The job service is a fake (the
worker's bookkeeping is the logic under test); tests/integration/test_prefetch.py drives the
real one."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from core.jobs.model import Lease
from core.worker.guard import JobGuard
from core.worker.loop import MAX_PREFETCH, Worker


class Lender:
    """Leases the queued jobs, recording how many each call asked for; records releases and
    completions (the test decides when handlers end)."""

    def __init__(self, jobs: int, *, lease_s: float = 30.0) -> None:
        self.settings = SimpleNamespace(lease_s=lease_s)
        self.queued = [f"job-{i}" for i in range(jobs)]
        self.asked: list[int] = []
        self.issued = 0
        self.released: list[tuple[str, str]] = []
        self.completed: list[str] = []
        self.extended: list[str] = []
        self.changed = asyncio.Event()
        self.more_work = asyncio.Event()

    async def acquire_many(self, worker_id: str, n: int, capabilities: Any, *,
                           lease_s: float) -> list[Lease]:
        self.asked.append(n)
        taken, self.queued = self.queued[:n], self.queued[n:]
        out = []
        for j in taken:
            self.issued += 1
            out.append(Lease(job_id=j, token=self.issued, attempt=1, job_type="noop",
                             payload={}, priority=3, timeout_s=60.0, lease_s=lease_s,
                             worker_id=worker_id, via="redis"))
        self.changed.set()
        return out

    async def complete(self, job_id: str, token: int, result: Any = None, *,
                       worker_id: str | None = None) -> None:
        self.completed.append(job_id)
        self.changed.set()

    async def release(self, job_id: str, token: int, reason: str) -> None:
        self.released.append((job_id, reason))
        self.changed.set()

    async def extend(self, job_id: str, token: int, *, lease_s: float) -> bool:
        self.extended.append(job_id)
        self.changed.set()
        return False

    async def wait_for_work(self, timeout_s: float) -> None:
        await self.more_work.wait()


async def settle(service: Lender, until: Any) -> None:
    """Until `until()` holds; a worker that never gets there fails the test in 10 s."""
    while not until():
        await asyncio.wait_for(service.changed.wait(), 10)
        service.changed.clear()


class Gated:
    """A handler that runs until the test opens its job's gate; what it is running, and the
    most it ran at once."""

    def __init__(self, service: Lender) -> None:
        self.service = service
        self.gates: dict[str, asyncio.Event] = {}
        self.running: list[str] = []
        self.peak = 0

    def gate(self, job: str) -> asyncio.Event:
        return self.gates.setdefault(job, asyncio.Event())

    async def __call__(self, payload: dict[str, Any]) -> None:
        job = payload["_job_id"]
        self.running.append(job)
        self.peak = max(self.peak, len(self.running))
        self.service.changed.set()
        await self.gate(job).wait()
        self.running.remove(job)


class Running:
    """A worker (`concurrency` slots, `prefetch` ahead, reports on their own) over a Lender of
    `jobs` whose handlers the test ends, started in this event loop."""

    def __init__(self, jobs: int, *, concurrency: int, prefetch: int = 0,
                 lease_s: float = 30.0) -> None:
        self.service = Lender(jobs, lease_s=lease_s)
        self.handler = Gated(self.service)
        self.worker = Worker(self.service, "w1", {"noop": self.handler},  # type: ignore[arg-type]
                             concurrency=concurrency, prefetch=prefetch, carry_reports=False,
                             idle_wait_s=30.0)
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(self.worker.run(self.stop))

    async def until(self, what: Any) -> None:
        await settle(self.service, what)

    async def stopped(self) -> None:
        self.stop.set()
        await self.task


def test_jobs_held_ahead_start_as_slots_free_never_beyond_concurrency() -> None:
    async def scenario() -> None:
        run = Running(5, concurrency=2, prefetch=3)
        handler, service = run.handler, run.service
        await run.until(lambda: handler.running == ["job-0", "job-1"])
        # one call filled both slots and the three places ahead
        assert service.asked == [5]
        for k in range(3):  # each job that ends lets the next one held ahead in, in order
            handler.gate(f"job-{k}").set()
            await run.until(lambda k=k: handler.running == [f"job-{k + 1}", f"job-{k + 2}"])
        handler.gate("job-3").set()
        handler.gate("job-4").set()
        await run.until(lambda: len(service.completed) == 5)
        assert service.completed == [f"job-{k}" for k in range(5)]
        assert handler.peak == 2
        assert run.worker.stats["ran_ahead"] == 3
        await run.stopped()
        assert service.released == []

    asyncio.run(scenario())


def test_jobs_held_ahead_go_back_unstarted_when_the_worker_stops() -> None:
    async def scenario() -> None:
        run = Running(4, concurrency=1, prefetch=3)
        handler, service = run.handler, run.service
        await run.until(lambda: handler.running == ["job-0"])
        run.stop.set()
        # the three held ahead go back at once, while job-0 still runs
        await run.until(lambda: len(service.released) == 3)
        assert handler.running == ["job-0"]
        assert service.released == [(f"job-{k}", "worker stopping before it started")
                                    for k in (1, 2, 3)]
        handler.gate("job-0").set()
        await run.stopped()
        assert service.completed == ["job-0"]
        assert run.worker.stats["ran_ahead"] == 0

    asyncio.run(scenario())


def test_without_prefetch_a_call_asks_for_the_free_slots_only() -> None:
    async def scenario() -> None:
        run = Running(3, concurrency=2)
        await run.until(lambda: len(run.handler.running) == 2)
        assert run.service.asked == [2]
        run.stop.set()
        for job in ("job-0", "job-1"):
            run.handler.gate(job).set()
        await run.stopped()
        assert run.service.released == []

    asyncio.run(scenario())


@pytest.mark.parametrize("prefetch", [-1, MAX_PREFETCH + 1])
def test_a_prefetch_out_of_range_is_refused_by_name(prefetch: int) -> None:
    with pytest.raises(ValueError, match="prefetch must be between 0 and"):
        Worker(Lender(jobs=0), "w1", {}, prefetch=prefetch)  # type: ignore[arg-type]


def test_the_lease_of_a_job_held_ahead_is_extended_counting_from_when_it_was_leased() -> None:
    async def scenario() -> None:
        service = Lender(jobs=0, lease_s=3.0)
        lease = Lease(job_id="job-0", token=1, attempt=1, job_type="noop", payload={},
                      priority=3, timeout_s=60.0, lease_s=3.0, worker_id="w1", via="redis")
        loop = asyncio.get_running_loop()
        task = asyncio.create_task(asyncio.sleep(3600))
        # leased 2 s ago: a third of the lease (1 s) is past, so the extension goes at once
        held = JobGuard(service, lease, task, loop.time() - 2.0)  # type: ignore[arg-type]
        await asyncio.wait_for(settle(service, lambda: service.extended == ["job-0"]), 0.5)
        await held.stop()
        # a job started as it was leased is first extended a third of the lease later
        fresh = JobGuard(service, lease, task, loop.time())  # type: ignore[arg-type]
        for _ in range(20):
            await asyncio.sleep(0)
        assert service.extended == ["job-0"]
        await fresh.stop()
        task.cancel()

    asyncio.run(scenario())


def test_a_job_whose_lease_ran_out_while_held_ahead_is_not_started() -> None:
    async def scenario() -> None:
        run = Running(3, concurrency=1, prefetch=2, lease_s=0.2)
        await run.until(lambda: run.handler.running == ["job-0"])
        await asyncio.sleep(0.3)  # job-0 outlives the leases of the two held ahead
        run.handler.gate("job-0").set()
        await run.until(lambda: run.service.completed == ["job-0"])
        for _ in range(20):  # passes of the loop in which a lapsed job would have started
            await asyncio.sleep(0)
        assert run.handler.running == []
        assert (run.worker.stats["lapsed_ahead"], run.worker.stats["ran_ahead"]) == (2, 0)
        await run.stopped()
        assert run.service.released == []  # nothing to give back: the leases are gone

    asyncio.run(scenario())
