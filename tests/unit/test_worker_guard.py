"""How a worker stops a running job: its timeout, a lost lease, a requested cancellation and
a drain each stop the handler and end in their own report (or none, for a lost lease); a
handler that swallows its stop is still reported as what stopped it. The job service is a
fake that records what it was told (the logic under test is the worker's); the real service
is driven by the integration suite (tests/integration/test_lifecycle.py)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from core.errors import StaleLease
from core.jobs.model import ExecutionStatus, Lease
from core.worker.loop import Worker


class Recorder:
    """Leases one job; extensions answer `extend_says` ("ok", "cancel" or "stale")."""

    def __init__(self, *, timeout_s: float = 10.0, lease_s: float = 30.0,
                 extend_says: str = "ok") -> None:
        self.settings = SimpleNamespace(lease_s=lease_s)
        self.lease = Lease(job_id="job-0", token=7, attempt=1, job_type="job", payload={},
                           priority=3, timeout_s=timeout_s, lease_s=lease_s, worker_id="w1",
                           via="redis")
        self.given = False
        self.extend_says = extend_says
        self.extended = 0
        self.reports: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self.reported = asyncio.Event()
        self.idle = asyncio.Event()

    async def acquire_many(self, worker_id: str, n: int, capabilities: Any, *,
                           lease_s: float) -> list[Lease]:
        if self.given:
            return []
        self.given = True
        return [self.lease]

    async def wait_for_work(self, timeout_s: float) -> None:
        await self.idle.wait()

    async def extend(self, job_id: str, token: int, *, lease_s: float) -> bool:
        self.extended += 1
        if self.extend_says == "stale":
            raise StaleLease(job_id, token, "PENDING")
        return self.extend_says == "cancel"

    def _record(self, name: str, *args: Any, **kwargs: Any) -> None:
        self.reports.append((name, args, kwargs))
        self.reported.set()

    async def complete(self, job_id: str, token: int, result: Any = None, *,
                       worker_id: str | None = None) -> None:
        self._record("complete", job_id, token, result)

    async def fail(self, job_id: str, token: int, error: str, *,
                   status: ExecutionStatus = ExecutionStatus.FAILED) -> None:
        self._record("fail", job_id, token, error, status=status)

    async def ack_cancel(self, job_id: str, token: int) -> None:
        self._record("ack_cancel", job_id, token)

    async def release(self, job_id: str, token: int, reason: str) -> None:
        self._record("release", job_id, token, reason)


async def run_one(service: Recorder, handler: Any, *, until: Any = None,
                  drain_timeout_s: float = 10.0) -> Worker:
    worker = Worker(service, "w1", {"job": handler},  # type: ignore[arg-type]
                    drain_timeout_s=drain_timeout_s, carry_reports=False)
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    if until is None:
        await service.reported.wait()
    else:
        await until(worker)
    stop.set()
    await asyncio.wait_for(running, 5)
    return worker


def hanging(stopped: asyncio.Event) -> Any:
    """A handler that waits for ever and sets `stopped` when it is stopped."""

    async def hang(payload: dict[str, Any]) -> None:
        try:
            await asyncio.Event().wait()
        finally:
            stopped.set()

    return hang


def test_a_job_past_its_timeout_is_stopped_and_failed_as_timed_out() -> None:
    async def scenario() -> None:
        service = Recorder(timeout_s=0.05)
        stopped = asyncio.Event()
        await run_one(service, hanging(stopped))
        assert stopped.is_set()
        [(name, args, kwargs)] = service.reports
        assert (name, args[2], kwargs) == ("fail", "timed out after 0.05 s",
                                           {"status": ExecutionStatus.TIMED_OUT})

    asyncio.run(scenario())


def test_a_handler_that_swallows_its_timeout_is_still_timed_out() -> None:
    async def scenario() -> None:
        service = Recorder(timeout_s=0.05)

        async def stubborn(payload: dict[str, Any]) -> str:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                return "finished anyway"
            return "never"

        await run_one(service, stubborn)
        [(name, _args, kwargs)] = service.reports
        assert (name, kwargs) == ("fail", {"status": ExecutionStatus.TIMED_OUT})

    asyncio.run(scenario())


def test_a_requested_cancellation_learnt_at_an_extension_stops_the_job() -> None:
    async def scenario() -> None:
        service = Recorder(lease_s=0.06, extend_says="cancel")

        async def hang(payload: dict[str, Any]) -> None:
            await asyncio.Event().wait()

        await run_one(service, hang)
        assert service.extended == 1
        assert [r[0] for r in service.reports] == ["ack_cancel"]

    asyncio.run(scenario())


def test_a_lost_lease_stops_the_job_without_a_report() -> None:
    async def scenario() -> None:
        service = Recorder(lease_s=0.06, extend_says="stale")
        stopped = asyncio.Event()

        async def until_lost(worker: Worker) -> None:
            await stopped.wait()

        worker = await run_one(service, hanging(stopped), until=until_lost)
        assert service.reports == []
        assert worker.stats["lease_lost"] == 1

    asyncio.run(scenario())


def test_extensions_keep_a_long_job_and_stop_when_it_ends() -> None:
    async def scenario() -> None:
        service = Recorder(lease_s=0.03)

        async def long(payload: dict[str, Any]) -> str:
            await asyncio.sleep(0.1)  # the job's own work: about three extensions' worth
            return "done"

        await run_one(service, long)
        assert service.extended >= 2
        seen = service.extended
        await asyncio.sleep(0.05)  # past the next extension, had the guard outlived the job
        assert service.extended == seen
        assert [(r[0], r[1][2]) for r in service.reports] == [("complete", "done")]

    asyncio.run(scenario())


def test_a_drain_past_its_timeout_releases_the_running_job() -> None:
    async def scenario() -> None:
        service = Recorder()
        started = asyncio.Event()

        async def hang(payload: dict[str, Any]) -> None:
            started.set()
            await asyncio.Event().wait()

        async def until_started(worker: Worker) -> None:
            await started.wait()

        await run_one(service, hang, until=until_started, drain_timeout_s=0.01)
        assert [(r[0], r[1][2]) for r in service.reports] == [("release", "worker draining")]

    asyncio.run(scenario())
