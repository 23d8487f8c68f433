"""How a worker's slots move: a slot is given back once its job's handler is done, so the
report of that outcome overlaps the next lease, and never more than `concurrency` reports are
in flight. The job service is a fake here (the slot bookkeeping is the logic under test); the
real service is driven by the integration and e2e suites."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from core.jobs.model import Lease
from core.worker.loop import Worker


class SlowReports:
    """Hands out the queued jobs one lease per free slot; each completion waits for its own
    event, so a test decides when a report ends."""

    def __init__(self, jobs: int) -> None:
        self.settings = SimpleNamespace(lease_s=30.0)
        self.queued = [f"job-{i}" for i in range(jobs)]
        self.started: list[str] = []
        self.reporting: dict[str, asyncio.Event] = {}
        self.completed: list[str] = []
        self.changed = asyncio.Event()  # for the test: something above changed
        self.more_work = asyncio.Event()  # for the worker's idle wait

    async def acquire_many(self, worker_id: str, n: int, capabilities: Any, *,
                           lease_s: float) -> list[Lease]:
        taken, self.queued = self.queued[:n], self.queued[n:]
        return [Lease(job_id=j, token=i + 1, attempt=1, job_type="noop", payload={},
                      priority=3, timeout_s=10.0, lease_s=lease_s, worker_id=worker_id,
                      via="redis") for i, j in enumerate(taken, start=len(self.started))]

    async def wait_for_work(self, timeout_s: float) -> None:
        await self.more_work.wait()

    async def complete(self, job_id: str, token: int, result: Any = None, *,
                       worker_id: str | None = None) -> None:
        self.reporting[job_id] = asyncio.Event()
        self.changed.set()
        await self.reporting[job_id].wait()
        self.completed.append(job_id)
        self.changed.set()


async def settle(service: SlowReports, until: Any) -> None:
    while not until():
        await service.changed.wait()
        service.changed.clear()


def test_a_report_in_flight_does_not_hold_the_slot_but_only_one_per_slot_may() -> None:
    async def scenario() -> None:
        service = SlowReports(jobs=3)

        def handler(payload: dict[str, Any]) -> None:
            service.started.append(payload["_job_id"])
            service.changed.set()

        # reports on their own (carried by the next lease: test_worker_carry.py)
        worker = Worker(service, "w1", {"noop": handler}, concurrency=1,  # type: ignore[arg-type]
                        carry_reports=False)
        stop = asyncio.Event()
        running = asyncio.create_task(worker.run(stop))
        # job-0's report is held open; its slot is back, so job-1 runs meanwhile
        await settle(service, lambda: "job-1" in service.reporting)
        assert service.started == ["job-0", "job-1"]
        assert service.completed == []
        # job-1's report is in flight too, but one early slot is all concurrency=1 allows:
        # job-1 keeps its slot until its own report ends, whatever job-0's does
        service.reporting["job-0"].set()
        await settle(service, lambda: service.completed == ["job-0"])
        for _ in range(20):  # passes of the loop in which the fake would lease job-2 at once
            await asyncio.sleep(0)
        assert service.started == ["job-0", "job-1"]
        service.reporting["job-1"].set()
        await settle(service, lambda: "job-2" in service.reporting)
        assert service.started == ["job-0", "job-1", "job-2"]
        for event in service.reporting.values():
            event.set()
        await settle(service, lambda: len(service.completed) == 3)
        stop.set()
        await asyncio.wait_for(running, 5)
        assert worker._slot_of == {}
        assert worker._reporting == 0
        assert worker.stats["complete"] == 3

    asyncio.run(scenario())
