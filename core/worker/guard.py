"""One running job watched by one timer (core/worker/loop.py runs the job): its timeout, its
lease's extensions, a requested cancellation."""

from __future__ import annotations

import asyncio
from typing import Any

from core.errors import StaleLease, StoreUnavailable
from core.jobs.model import Lease
from core.service.jobs import JobService


class JobGuard:
    """Watches one running job with one timer: at its timeout the job is stopped ("timeout");
    every third of the lease the lease is extended, which also says whether the job's
    cancellation was requested ("cancel") or the lease is gone ("lost"). Stopping the job
    cancels its task, once, and only while its handler runs; `told` says why. Most jobs end
    before either is due, so most guards are one timer and nothing else."""

    __slots__ = ("_call", "_deadline", "_extend_at", "_lease", "_loop", "_running", "_service",
                 "_task", "_timer", "told")

    def __init__(self, service: JobService, lease: Lease, task: asyncio.Task[Any],
                 leased_at: float | None = None) -> None:
        self.told: str | None = None
        self._service = service
        self._lease = lease
        self._task = task
        self._running = True
        self._call: asyncio.Task[None] | None = None
        self._loop = asyncio.get_running_loop()
        now = self._loop.time()
        self._deadline = now + lease.timeout_s
        # a job held ahead of a slot (loop.py) has had its lease since `leased_at`: extended
        # a third of the lease after that, at once if that is past
        self._extend_at = (now if leased_at is None else leased_at) + lease.lease_s / 3
        self._timer: asyncio.TimerHandle | None = None
        self._arm()

    def _arm(self) -> None:
        if self._call is None and self._extend_at < self._deadline:
            self._timer = self._loop.call_at(self._extend_at, self._extend_due)
        else:  # only the timeout is left to watch (or an extension is on its way)
            self._timer = self._loop.call_at(self._deadline, self._timeout_due)

    def _extend_due(self) -> None:
        self._call = self._loop.create_task(self._extend())
        self._arm()

    def _timeout_due(self) -> None:
        self._timer = None
        self._stop_job("timeout")

    def _stop_job(self, why: str) -> None:
        if self._running and self.told is None:
            self.told = why
            self._task.cancel()

    async def _extend(self) -> None:
        lease = self._lease
        try:
            cancel = await self._service.extend(lease.job_id, lease.token, lease_s=lease.lease_s)
        except StaleLease:
            self._stop_job("lost")
            return
        except StoreUnavailable:
            cancel = False  # keep running; the lease may still be valid when the store returns
        finally:
            self._call = None
        if cancel:
            self._stop_job("cancel")
            return
        if self._running:
            self._extend_at = self._loop.time() + lease.lease_s / 3
            if self._timer is not None:
                self._timer.cancel()
            self._arm()

    async def stop(self) -> None:
        """The handler is done: nothing is stopped from now on."""
        self._running = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        call = self._call
        if call is not None and not call.done():
            call.cancel()
            await asyncio.gather(call, return_exceptions=True)
