"""A worker's successes ride with its next lease call (one round trip and one commit for the
completions and the lease that refills their slots), never wait for it longer than it takes,
and go on their own when the loop stops or the store fails. The job service is a fake (the
worker's bookkeeping is the logic under test); the real one is driven by the integration and
e2e suites (complete_and_lease: tests/integration/test_lifecycle.py)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from core.errors import StaleLease, StoreUnavailable
from core.jobs.model import Lease
from core.service.completing import Reported
from core.worker.loop import CARRY_MAX, Worker


class Carrier:
    """Leases the queued jobs; records what each call carried. `stale` job ids are refused;
    `down` makes the next carrying call fail for want of PostgreSQL."""

    def __init__(self, jobs: int, *, stale: frozenset[str] = frozenset()) -> None:
        self.settings = SimpleNamespace(lease_s=30.0)
        self.queued = [f"job-{i}" for i in range(jobs)]
        self.issued = 0
        self.stale = stale
        self.down = False
        self.carried: list[list[str]] = []  # per report_and_acquire call
        self.alone: list[str] = []  # completions sent on their own
        self.changed = asyncio.Event()
        self.more_work = asyncio.Event()
        self.idling = asyncio.Event()  # the worker waits for work
        self.forgets_sent: list[int] = []  # calls carried before each send_forgets

    def _leases(self, n: int, worker_id: str) -> list[Lease]:
        taken, self.queued = self.queued[:n], self.queued[n:]
        out = []
        for j in taken:
            self.issued += 1
            out.append(Lease(job_id=j, token=self.issued, attempt=1, job_type="noop",
                             payload={}, priority=3, timeout_s=10.0, lease_s=30.0,
                             worker_id=worker_id, via="redis"))
        return out

    async def acquire_many(self, worker_id: str, n: int, capabilities: Any, *,
                           lease_s: float) -> list[Lease]:
        return self._leases(n, worker_id)

    async def report_and_acquire(self, worker_id: str, n: int, capabilities: Any,
                                 done: list[tuple[str, int, Any]], *,
                                 lease_s: float) -> Reported:
        self.carried.append([j for j, _, _ in done])
        self.changed.set()
        if self.down:
            self.down = False
            error = StoreUnavailable("PostgreSQL went away")
            return Reported(leases=[], outcomes=[error] * len(done), error=error)
        outcomes: list[Any] = [StaleLease(j, t, "PENDING") if j in self.stale else None
                               for j, t, _ in done]
        return Reported(leases=self._leases(n, worker_id), outcomes=outcomes)

    async def complete(self, job_id: str, token: int, result: Any = None, *,
                       worker_id: str | None = None) -> None:
        self.alone.append(job_id)
        self.changed.set()

    async def send_forgets(self) -> None:
        self.forgets_sent.append(len(self.carried))

    async def wait_for_work(self, timeout_s: float) -> None:
        self.idling.set()
        await self.more_work.wait()


async def run_until(service: Carrier, until: Any, worker: Worker) -> None:
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    while not until():
        await service.changed.wait()
        service.changed.clear()
    stop.set()
    await running


def test_successes_ride_with_the_lease_that_refills_their_slots() -> None:
    async def scenario() -> None:
        service = Carrier(jobs=6)
        worker = Worker(service, "w1", {"noop": lambda p: None},  # type: ignore[arg-type]
                        concurrency=3, idle_wait_s=30.0)
        done = lambda: sum(map(len, service.carried)) + len(service.alone) == 6  # noqa: E731
        await run_until(service, done, worker)
        # the first three ended together and rode with the lease of the next three; those
        # rode with the next call (which found nothing more to lease)
        assert service.carried[:2] == [["job-0", "job-1", "job-2"], ["job-3", "job-4", "job-5"]]
        assert service.alone == []
        assert worker.stats["complete"] == 6
        # the loop sent the waiting forgets before it idled (after the last carrying call)
        # and once more when it stopped
        assert service.forgets_sent[0] == len(service.carried)
        assert len(service.forgets_sent) >= 2

    asyncio.run(scenario())


def test_a_refused_carried_completion_counts_as_stale() -> None:
    async def scenario() -> None:
        service = Carrier(jobs=2, stale=frozenset({"job-1"}))
        worker = Worker(service, "w1", {"noop": lambda p: None},  # type: ignore[arg-type]
                        concurrency=2, idle_wait_s=30.0)
        await run_until(service, lambda: sum(map(len, service.carried)) == 2, worker)
        assert (worker.stats["complete"], worker.stats["rejected_stale"]) == (1, 1)

    asyncio.run(scenario())


def test_a_success_while_the_loop_idles_is_carried_at_once() -> None:
    async def scenario() -> None:
        service = Carrier(jobs=1)
        release = asyncio.Event()

        async def handler(payload: dict[str, Any]) -> None:
            await release.wait()

        # an idle wait of an hour: only the waiting success may wake the loop
        worker = Worker(service, "w1", {"noop": handler},  # type: ignore[arg-type]
                        concurrency=2, idle_wait_s=3600.0)
        stop = asyncio.Event()
        running = asyncio.create_task(worker.run(stop))
        await service.idling.wait()  # job-0 runs; the loop found no more work and idles
        release.set()
        await asyncio.wait_for(service.changed.wait(), timeout=5)
        assert service.carried == [["job-0"]]
        stop.set()
        await running

    asyncio.run(scenario())


def test_a_store_failure_sends_the_success_again_on_its_own() -> None:
    async def scenario() -> None:
        service = Carrier(jobs=2)
        service.down = True  # the first carrying call fails
        worker = Worker(service, "w1", {"noop": lambda p: None},  # type: ignore[arg-type]
                        concurrency=2, idle_wait_s=30.0)
        await run_until(service, lambda: len(service.alone) == 2, worker)
        assert service.carried == [["job-0", "job-1"]]
        assert worker.stats["report_retried"] == 2
        assert worker.stats["complete"] == 2

    asyncio.run(scenario())


def test_a_wide_worker_sends_its_successes_in_their_own_statements() -> None:
    async def scenario() -> None:
        n = CARRY_MAX + 8
        service = Carrier(jobs=2 * n)
        worker = Worker(service, "w1", {"noop": lambda p: None},  # type: ignore[arg-type]
                        concurrency=n, idle_wait_s=30.0)
        await run_until(service, lambda: len(service.alone) == 2 * n, worker)
        # more slots than CARRY_MAX: large batches, sent beside the leases, not in them
        assert service.carried == []
        assert worker.stats["complete"] == 2 * n

    asyncio.run(scenario())
