"""The worker loop: lease jobs it is capable of, run their handlers with the job's timeout,
keep the lease alive, stop cooperatively on cancellation, and report the outcome with the
lease's fencing token. A rejected (stale) report is counted, never retried.

A slot is taken by a job's handler: once the handler is done, the slot may take the next
job while the outcome is still being reported (the report and the next lease overlap), with no
more than `concurrency` reports in flight. A success whose slot was given back so waits for
the loop's next lease call, which carries it (one round trip and one commit to PostgreSQL for
the completions and the lease that refills their slots: JobService.report_and_acquire). Each
job runs in one task, watched by one timer (its timeout, its lease's extensions, a requested
cancellation).

A worker may also hold up to `prefetch` jobs leased ahead of its free slots (off by default).
Each cycle then brings the jobs that will fill the slots next, so a worker of short jobs makes
fewer, larger lease calls (the per-call cost of the stores is most of a small batch's:
docs/performance.md, item 24). A job held ahead starts when a slot frees, first come first
served; its lease is kept from the moment it was leased (one that ran out while it waited is
not started); it counts against limits as leased.
Long jobs should not be held ahead: they would wait behind running ones while another worker
could take them.

Stopping drains: no new leases; jobs held ahead go back at once, running jobs get
`drain_timeout_s` to finish, then their handlers are cancelled; every lease given back so is
released without spending a retry.

Length: the loop is one piece (leasing, running, reporting, stopping share the slot
accounting), with its slot bookkeeping (_Slot) beside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import random
import time
import traceback
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from core.errors import JobHarnessError, StaleLease, StoreUnavailable
from core.jobs.model import ExecutionStatus, Lease
from core.service.jobs import JobService
from core.worker.guard import JobGuard
from core.worker.handlers import Handler
from core.worker.health import HealthMonitor

MAX_ERROR_CHARS = 4000
# While PostgreSQL is unavailable a worker keeps its slots and asks again after a growing,
# jittered pause (first pause, cap): a restart takes seconds, and 100 workers asking every
# few milliseconds would only slow its recovery.
STORE_RETRY_S = (0.1, 2.0)
# A worker with at most this many slots carries its successes with its leases. Carrying saves
# a statement's fixed cost (the call, the commit: most of a small batch's PostgreSQL time); a
# wider worker's batches are large, their own statement costs about as much per job as carried,
# and sent beside the lease instead of in it, it runs on another PostgreSQL process meanwhile
# (docs/performance.md, item 20).
CARRY_MAX = 32
MAX_PREFETCH = 1000
FORGED_TOKEN_OFFSET = 1 << 40  # what a "forge" worker adds to its tokens: none was ever issued


class Worker:
    """One worker identity running up to `concurrency` jobs at once in this event loop."""

    def __init__(
        self,
        service: JobService,
        worker_id: str,
        handlers: Mapping[str, Handler],
        *,
        capabilities: Sequence[str] = (),
        concurrency: int = 1,
        lease_s: float | None = None,
        idle_wait_s: float = 1.0,
        drain_timeout_s: float = 10.0,
        carry_reports: bool = True,
        prefetch: int = 0,
    ) -> None:
        if not 0 <= prefetch <= MAX_PREFETCH:
            raise ValueError(f"prefetch must be between 0 and {MAX_PREFETCH}, not {prefetch}")
        self.service = service
        self.worker_id = worker_id
        self.handlers = handlers
        self.capabilities = tuple(capabilities)
        self.concurrency = concurrency
        self.prefetch = prefetch
        self.lease_s = lease_s or service.settings.lease_s
        self.idle_wait_s = idle_wait_s
        self.drain_timeout_s = drain_timeout_s
        self.stats: Counter[str] = Counter()
        self.health = HealthMonitor()
        self._running: set[asyncio.Task[None]] = set()
        self._slot_of: dict[int, _Slot] = {}  # lease token -> its slot, until it is given back
        self._reporting = 0  # slots given back before their job's report ended
        self._handlers_running: dict[str, asyncio.Task[None]] = {}  # job id -> its task
        self._releasing = False
        self._stopping = False  # the loop has stopped: jobs held ahead go back unstarted
        # jobs held ahead, waiting for a slot: (lease, when it was leased on the loop's clock)
        self._ahead: deque[tuple[Lease, float]] = deque()
        self._store_failures = 0  # consecutive acquisitions refused by a store outage
        # successes waiting for the loop's next lease call to carry them (job id, token,
        # result, the report's future: True once carried, False to send it alone); only
        # while the loop runs (`_carrying`)
        self._outbox: list[tuple[str, int, Any, asyncio.Future[bool]]] = []
        self._outbox_ready = asyncio.Event()
        self.carry_reports = carry_reports and concurrency <= CARRY_MAX
        self._carrying = False
        # drills: a misbehaviour turned on in this worker (core/worker/faults.py BYZANTINE_MODES)
        self.byzantine: str | None = None

    def store_retry_s(self, failures: int) -> float:
        """Pause before the next try after `failures` consecutive store failures."""
        first, cap = STORE_RETRY_S
        return random.uniform(0.5, 1.0) * min(cap, first * 2.0 ** max(0, failures - 1))

    async def run(self, stop: asyncio.Event) -> None:
        """Lease and run jobs until `stop` is set, then drain."""
        slots = asyncio.Semaphore(self.concurrency)
        self._carrying = True
        while not stop.is_set():
            if not await self._free_slot(slots, stop):
                break
            free = 1
            await asyncio.sleep(0)  # jobs ending in this pass of the loop give theirs back too
            while not slots.locked():  # every other free slot too: one round trip fills all
                await slots.acquire()
                free += 1
            try:
                leases = await self._lease(free + max(0, self.prefetch - len(self._ahead)))
            except StoreUnavailable:
                leases = []
                self.stats["store_unavailable"] += 1
                self._store_failures += 1
            else:
                self._store_failures = 0
            for _ in range(free - len(leases)):
                slots.release()
            now = asyncio.get_running_loop().time()
            for lease in leases[:free]:
                self._start(lease, slots, now)
            self._ahead.extend((lease, now) for lease in leases[free:])
            if self._store_failures:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(),
                                           self.store_retry_s(self._store_failures))
            elif not leases:
                await self._idle(stop)
        self._carrying = False
        self._stopping = True
        while self._ahead:  # not started: their leases go back now
            lease, _ = self._ahead.popleft()
            task = asyncio.create_task(self._report(self.service.release, lease,
                                                    "worker stopping before it started"))
            self._running.add(task)
            task.add_done_callback(self._running.discard)
        self._send_outbox()
        await self.drain()
        if self.carry_reports:
            await self.service.send_forgets()  # the last carried completions' forgets

    def _start(self, lease: Lease, slots: asyncio.Semaphore, leased_at: float) -> None:
        """Run a leased job in a slot already taken for it."""
        slot = _Slot(self, slots, lease.token)
        self._slot_of[lease.token] = slot
        task = asyncio.create_task(self._run_job(lease, leased_at))
        self._running.add(task)
        task.add_done_callback(slot.task_done)

    def _slot_freed(self, slots: asyncio.Semaphore) -> None:
        """A slot came free: the next job held ahead takes it, or it goes back. A job whose
        lease ran out while it waited is not started: the reconciler has it back."""
        if self._ahead and not self._stopping:
            now = asyncio.get_running_loop().time()
            while self._ahead:
                lease, leased_at = self._ahead.popleft()
                if now - leased_at < lease.lease_s:
                    self.stats["ran_ahead"] += 1
                    self._start(lease, slots, leased_at)
                    return
                self.stats["lapsed_ahead"] += 1
        slots.release()

    async def _lease(self, n: int) -> list[Lease]:
        """Fill `n` free slots; the successes waiting in the outbox ride along."""
        done, self._outbox = self._outbox, []
        self._outbox_ready.clear()
        if not done:
            return await self.service.acquire_many(self.worker_id, n, self.capabilities,
                                                   lease_s=self.lease_s)
        try:
            got = await self.service.report_and_acquire(
                self.worker_id, n, self.capabilities, [(j, t, r) for j, t, r, _ in done],
                lease_s=self.lease_s)
        except BaseException:  # never leave a report waiting: each goes on its own
            self._go_alone(done)
            raise
        for (*_, future), outcome in zip(done, got.outcomes, strict=True):
            if not future.done():
                future.set_result(True) if outcome is None else future.set_exception(outcome)
        if got.error is not None:
            raise got.error
        return got.leases

    def _send_outbox(self) -> None:
        """The loop has stopped: successes still waiting go on their own."""
        done, self._outbox = self._outbox, []
        self._go_alone(done)

    @staticmethod
    def _go_alone(done: list[tuple[str, int, Any, asyncio.Future[bool]]]) -> None:
        for *_, future in done:
            if not future.done():
                future.set_result(False)  # not carried: its report sends it

    async def complete(self, job_id: str, token: int, result: Any, *, worker_id: str) -> None:
        """A success carried by the loop's next lease call (`_lease`), or sent on its own if
        that call does not take it."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._outbox.append((job_id, token, result, future))
        self._outbox_ready.set()
        if not await future:
            await self.service.complete(job_id, token, result, worker_id=worker_id)

    @staticmethod
    async def _free_slot(slots: asyncio.Semaphore, stop: asyncio.Event) -> bool:
        """Take a slot, unless `stop` is set first (a full worker must still stop)."""
        taking = asyncio.create_task(slots.acquire())
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({taking, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if taking.done() and not stop.is_set():
            return True
        taking.cancel()
        await asyncio.gather(taking, stopping, return_exceptions=True)
        if taking.done() and not taking.cancelled():
            slots.release()
        return False

    async def drain(self) -> None:
        """Give running jobs `drain_timeout_s`, then cancel and release the rest."""
        if not self._running:
            return
        _, pending = await asyncio.wait(set(self._running), timeout=self.drain_timeout_s)
        if pending:
            self._releasing = True
            for handler in list(self._handlers_running.values()):
                handler.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _idle(self, stop: asyncio.Event) -> None:
        """Wait for work, a stop, or a success to carry."""
        if self.carry_reports:  # no lease call soon to carry them: the forgets go now
            await self.service.send_forgets()
        waits = (asyncio.create_task(self.service.wait_for_work(self.idle_wait_s)),
                 asyncio.create_task(stop.wait()), asyncio.create_task(self._outbox_ready.wait()))
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for t in waits:
            t.cancel()
        await asyncio.gather(*waits, return_exceptions=True)

    async def _run_job(self, lease: Lease, leased_at: float) -> None:
        """One job in this task: its handler runs here (no task of its own), watched by one
        timer (JobGuard: the timeout, the extensions of the lease taken at `leased_at`, a
        requested cancellation), which stops it by cancelling this task."""
        handler = self.handlers.get(lease.job_type)
        if self.byzantine == "idle":  # drops the lease on the floor: never runs or extends it
            return
        if handler is None and lease.capability in self.capabilities:
            # it claimed the job's capability and cannot serve it: the job goes back without
            # spending a retry, and the claim is evidence against this worker
            await self.service.record_evidence(
                self.worker_id, "false_capability", f"claimed {lease.capability!r} but has no "
                f"handler for job type {lease.job_type!r}", lease.job_id)
            await self._report(self.service.release, lease, "no handler on this worker")
            return
        if handler is None:
            await self._report(self.service.fail, lease,
                               f"no handler for job type {lease.job_type!r} on this worker")
            return
        payload = {**lease.payload, "_attempt": lease.attempt, "_job_id": lease.job_id}
        task = asyncio.current_task()
        assert task is not None
        self._handlers_running[lease.job_id] = task
        self.health.in_flight += 1
        guard = JobGuard(self.service, lease, task, leased_at)
        started = time.monotonic()
        try:
            try:
                result = handler(payload)
                if inspect.isawaitable(result):
                    result = await result
            finally:
                self.health.in_flight -= 1
                self._handlers_running.pop(lease.job_id, None)
                await guard.stop()
        except asyncio.CancelledError:
            if guard.told is None and not self._releasing:
                raise  # not a stop of this job's: the worker itself is being cancelled
            task.uncancel()
            await self._stopped(lease, guard.told, started)
        except Exception as exc:  # the job boundary: any handler error fails the attempt
            self.health.job_finished(time.monotonic() - started, ok=False)
            text = "".join(traceback.format_exception_only(exc)).strip()[:MAX_ERROR_CHARS]
            await self._report(self.service.fail, lease, text)
        else:
            if guard.told is not None:  # the handler swallowed its stop and returned anyway
                task.uncancel()
                if guard.told == "timeout":
                    await self._stopped(lease, guard.told, started)
                    return
            self.health.job_finished(time.monotonic() - started, ok=True)
            if self.byzantine == "forge":  # a token no lease ever had
                lease = replace(lease, token=lease.token + FORGED_TOKEN_OFFSET)
            await self._report(self.service.complete, lease, _jsonable(result),
                               worker_id=self.worker_id)

    async def _stopped(self, lease: Lease, told: str | None, started: float) -> None:
        """A job whose handler was stopped: timed out, cancelled on request, its lease lost,
        or the worker draining."""
        if told == "timeout":
            self.health.job_finished(time.monotonic() - started, ok=False, timed_out=True)
            await self._report(self.service.fail, lease, f"timed out after {lease.timeout_s} s",
                               status=ExecutionStatus.TIMED_OUT)
        elif told == "cancel":
            await self._report(self.service.ack_cancel, lease)
        elif told == "lost":
            self.stats["lease_lost"] += 1
        else:  # the worker is draining
            await self._report(self.service.release, lease, "worker draining")

    async def _report(self, op: Any, lease: Lease, *args: Any, **kwargs: Any) -> None:
        """Report an outcome with the lease's token. While PostgreSQL is unavailable the
        report is retried with backoff for as long as the lease could still be current (after
        that the reconciler has expired it and the report would be refused as stale)."""
        slot = self._slot_of.pop(lease.token, None)
        early = slot is not None and slot.give_back_early()
        if (early and op == self.service.complete and self._carrying and self.carry_reports
                and not self._store_failures):
            op = self.complete  # the loop wakes for the slot given back, and carries it
        give_up = time.monotonic() + 2 * lease.lease_s
        failures = 0
        try:
            while True:
                try:
                    await op(lease.job_id, lease.token, *args, **kwargs)
                    self.stats[op.__name__] += 1
                except StaleLease:
                    self.stats["rejected_stale"] += 1
                except StoreUnavailable:
                    failures += 1
                    if op == self.complete:
                        op = self.service.complete  # tried again on its own
                    if time.monotonic() < give_up:
                        self.stats["report_retried"] += 1
                        await asyncio.sleep(self.store_retry_s(failures))
                        continue
                    self.stats["report_failed"] += 1
                except JobHarnessError:
                    self.stats["report_failed"] += 1
                return
        finally:
            if early:
                assert slot is not None
                slot.report_ended()


class _Slot:
    """One job's hold on a worker slot: given back when the job's task ends, or earlier, once
    its handler is done and fewer than `concurrency` reports are in flight."""

    __slots__ = ("_early", "_held", "_slots", "_token", "_worker")

    def __init__(self, worker: Worker, slots: asyncio.Semaphore, token: int) -> None:
        self._worker = worker
        self._slots = slots
        self._token = token
        self._held = True
        self._early = False

    def give_back_early(self) -> bool:
        worker = self._worker
        if self._held and worker._reporting < worker.concurrency + worker.prefetch:
            self._held = False
            self._early = True
            worker._reporting += 1
            worker._slot_freed(self._slots)
            return True
        return False

    def report_ended(self) -> None:
        """Its report is done: no longer one of the reports in flight (at once, not when the
        job's task has ended: the next job's report may be given back early meanwhile)."""
        if self._early:
            self._early = False
            self._worker._reporting -= 1

    def task_done(self, task: asyncio.Task[None]) -> None:
        worker = self._worker
        worker._running.discard(task)
        worker._slot_of.pop(self._token, None)  # ended without a report (lost, cancelled)
        if self._held:
            self._held = False
            worker._slot_freed(self._slots)
        elif self._early:
            worker._reporting -= 1


_SCALARS = (str, int, float, bool, type(None))


def _jsonable(value: Any) -> Any:
    """A handler's result as JSON can hold it (its repr when it cannot be encoded). A scalar,
    or a flat dict of scalars under string keys (most results), needs no trial encoding."""
    if type(value) in _SCALARS:
        return value
    if type(value) is dict and all(type(k) is str and type(v) in _SCALARS
                                   for k, v in value.items()):
        return value
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return {"repr": repr(value)[:MAX_ERROR_CHARS]}
    return value
