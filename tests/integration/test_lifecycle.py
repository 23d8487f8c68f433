"""The seed's job-lifecycle suite against real PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from core.errors import InvalidInput, InvalidTransition, StaleLease
from core.jobs.backoff import BackoffPolicy
from core.jobs.model import ExecutionStatus, JobSpec, JobStatus
from core.service.jobs import JobService
from core.worker.handlers import BUILTIN_HANDLERS
from core.worker.loop import Worker
from tests.conftest import wait_until


async def executions(svc: JobService, job_id: str) -> list[dict[str, Any]]:
    rows = await svc.pool.fetch(
        "SELECT * FROM job_executions WHERE job_id = $1 ORDER BY attempt", uuid.UUID(job_id)
    )
    return [dict(r) for r in rows]


async def test_create_acquire_complete(service: JobService) -> None:
    created = await service.create(JobSpec(job_type="noop", payload={"n": 1}, priority=4))
    assert created.status == JobStatus.PENDING
    assert created.created
    assert await service.dispatch.depths() == {"high": 1, "medium": 0, "low": 0, "delayed": 0,
                                               "processing": 0, "dead_letter": 0}
    lease = await service.acquire("w1")
    assert lease is not None
    assert lease.job_id == created.job_id
    assert lease.attempt == 1
    assert (await service.dispatch.depths())["processing"] == 1
    job = await service.get(created.job_id)
    assert job.status == JobStatus.PROCESSING
    assert job.worker_id == "w1"
    assert job.lease_token == lease.token

    await service.complete(lease.job_id, lease.token, {"answer": 42})
    job = await service.get(created.job_id)
    assert job.status == JobStatus.COMPLETED
    assert job.result == {"answer": 42}
    assert job.completed_at is not None
    assert job.started_at is not None
    assert job.created_at <= job.started_at <= job.completed_at
    (ex,) = await executions(service, created.job_id)
    assert ex["status"] == "COMPLETED"
    assert ex["lease_token"] == lease.token
    assert ex["duration_ms"] is not None
    assert ex["finished_at"] is not None
    assert (await service.dispatch.depths())["processing"] == 0
    assert await service.acquire("w1") is None


async def test_concurrent_single_creates_share_inserts(service: JobService) -> None:
    before = (service._creates.batches, service._creates.items)
    specs = [JobSpec(job_type="noop", payload={"n": i}, priority=1 + i % 5) for i in range(200)]
    bad = JobSpec(job_type="no-such-type", payload={})
    outcomes = await asyncio.gather(*(service.create(s) for s in specs[:100]),
                                    service.create(bad),
                                    *(service.create(s) for s in specs[100:]),
                                    return_exceptions=True)
    assert isinstance(outcomes[100], InvalidInput)  # refused alone, before any batching
    created = [o for o in outcomes if not isinstance(o, BaseException)]
    assert len(created) == 200
    assert all(c.status == JobStatus.PENDING for c in created)
    batches = service._creates.batches - before[0]
    assert service._creates.items - before[1] == 200
    assert batches < 200  # callers arriving together shared a statement
    rows = await service.pool.fetch("SELECT payload FROM jobs")
    assert sorted(r["payload"]["n"] for r in rows) == list(range(200))
    depths = await service.dispatch.depths()
    assert depths["high"] + depths["medium"] + depths["low"] == 200


async def test_completions_ride_with_the_next_lease_in_one_commit(
        service: JobService) -> None:
    created = await service.create_batch(
        [JobSpec(job_type="noop", payload={"n": i}, ref=f"j{i}") for i in range(6)]
        + [JobSpec(job_type="noop", payload={}, depends_on=["j0"])])
    child = created[-1]
    first = await service.acquire_many("w1", 3)
    assert len(first) == 3
    done = [(lease.job_id, lease.token + (i == 1), {"i": i})  # the second with a wrong token
            for i, lease in enumerate(first)]
    carried = service.stats["completions_carried"]
    got = await service.report_and_acquire("w1", 3, (), done)
    assert got.error is None
    assert [type(o).__name__ if o else None for o in got.outcomes] == [
        None, "StaleLease", None]  # the wrong token is refused alone
    assert len(got.leases) == 3
    assert service.stats["completions_carried"] - carried == 3
    # one transaction wrote the completions and the leases: their rows share its id
    writers = await service.pool.fetch(
        "SELECT DISTINCT xmin::text FROM jobs WHERE id = ANY($1::uuid[])",
        [first[0].job_id, first[2].job_id, *(lease.job_id for lease in got.leases)])
    assert len(writers) == 1
    completed = {r["id"] for r in await service.pool.fetch(
        "SELECT id::text FROM jobs WHERE status = 'COMPLETED'")}
    assert completed == {first[0].job_id, first[2].job_id}
    await service.indexed()
    depths = await service.dispatch.depths()
    assert depths["processing"] == 4  # three new leases and the refused one; the two forgotten
    # j0's completion released its dependent, which the reconciler need not find
    assert (await service.get(child.job_id)).status == JobStatus.PENDING
    where = await service.dispatch.presence([child.job_id])
    assert where.indexed == {child.job_id}
    # with nothing left to lease, the completions still go (on their own)
    rest = await service.acquire_many("w1", 10)
    got = await service.report_and_acquire(
        "w1", 5, (), [(lease.job_id, lease.token, None) for lease in got.leases + rest])
    assert got.outcomes == [None] * (3 + len(rest))
    assert got.leases == []
    assert (await service.counts())["COMPLETED"] == 2 + 3 + len(rest)


async def test_concurrent_completions_share_a_statement(service: JobService) -> None:
    created = await service.create_batch(
        [JobSpec(job_type="noop", payload={"n": i}, ref=f"j{i}") for i in range(40)]
        + [JobSpec(job_type="noop", payload={}, depends_on=["j0", "j1"])])
    child = created[-1]
    assert child.status == JobStatus.WAITING
    leases = [await service.acquire("w1") for _ in range(40)]
    assert all(lease is not None for lease in leases)
    before = (service._completions.batches, service._completions.items)
    # one batch shares one enqueue time, so leases come in id order: find j20's by its id
    (k,) = [i for i, lease in enumerate(leases)
            if lease is not None and lease.job_id == created[20].job_id]
    stale = leases[k]
    outcomes = await asyncio.gather(
        *(service.complete(lease.job_id, lease.token + (lease is stale), {"i": i})
          for i, lease in enumerate(leases) if lease is not None),
        return_exceptions=True)
    assert isinstance(outcomes[k], StaleLease)  # the wrong token fails alone
    assert sum(o is None for o in outcomes) == 39
    assert service._completions.items - before[1] == 40
    assert service._completions.batches - before[0] < 40
    counts = await service.counts()
    assert counts["COMPLETED"] == 39
    assert counts["PROCESSING"] == 1
    assert (await service.get(child.job_id)).status == JobStatus.PENDING  # released once
    first = leases[0 if k else 1]
    assert first is not None
    assert (await service.get(first.job_id)).result == {"i": 0 if k else 1}
    lease = await service.acquire("w1")
    assert lease is not None
    assert lease.job_id == child.job_id
    assert (await service.dispatch.depths())["processing"] == 2  # the stale one's and this


async def test_one_batch_completing_a_job_twice_records_it_once(service: JobService) -> None:
    from core.errors import JobNotFound

    await service.create_batch([JobSpec(job_type="noop", payload={"n": i}) for i in range(3)])
    leases = [lease for lease in [await service.acquire("w1") for _ in range(3)] if lease]
    twice = leases[0]
    outcomes = await asyncio.gather(
        service.complete(twice.job_id, twice.token, {"call": 1}),
        service.complete(twice.job_id, twice.token, {"call": 2}),
        service.complete(str(uuid.uuid4()), 7),
        *(service.complete(lease.job_id, lease.token) for lease in leases[1:]),
        return_exceptions=True)
    assert sorted(type(o).__name__ for o in outcomes[:2]) == ["NoneType", "StaleLease"]
    assert isinstance(outcomes[2], JobNotFound)
    assert outcomes[3:] == [None, None]
    job = await service.get(twice.job_id)
    assert job.status == JobStatus.COMPLETED
    assert job.result == ({"call": 1} if outcomes[0] is None else {"call": 2})
    rows = await service.pool.fetch("SELECT status FROM job_executions WHERE job_id = $1::uuid",
                                    twice.job_id)
    assert [r["status"] for r in rows] == ["COMPLETED"]


async def test_acquire_many_fills_free_slots_best_first(service: JobService) -> None:
    created = await service.create_batch(
        [JobSpec(job_type="noop", payload={"n": i}, priority=1 + i % 5) for i in range(10)]
        + [JobSpec(job_type="noop", payload={}, priority=5, required_capability="gpu")])
    # a queued entry whose job was cancelled meanwhile is skipped, not handed out
    cancelled = created[4].job_id  # priority 5
    await service.pool.execute("UPDATE jobs SET status = 'CANCELLED', completed_at = now()"
                               " WHERE id = $1::uuid", cancelled)
    first = await service.acquire_many("w1", 4)
    assert sorted((lease.priority for lease in first), reverse=True) == [5, 4, 4, 3]
    assert cancelled not in {lease.job_id for lease in first}
    assert {lease.worker_id for lease in first} == {"w1"}
    rest = await service.acquire_many("w2", 20)
    assert len(rest) == 5  # fewer than asked: the gpu job is not for w2
    assert sorted(lease.priority for lease in rest) == [1, 1, 2, 2, 3]
    gpu = await service.acquire_many("w3", 3, ["gpu"])
    assert [lease.job_id for lease in gpu] == [created[10].job_id]
    leased = [*first, *rest, *gpu]
    assert len({lease.job_id for lease in leased}) == 10
    assert len({lease.token for lease in leased}) == 10
    rows = await service.pool.fetch("SELECT worker_id, count(*) FROM job_executions"
                                    " GROUP BY worker_id ORDER BY worker_id")
    assert [(r["worker_id"], r["count"]) for r in rows] == [("w1", 4), ("w2", 5), ("w3", 1)]
    assert (await service.dispatch.depths())["processing"] == 10


async def test_concurrent_acquires_share_a_pop_and_lease_each_job_once(
        service: JobService) -> None:
    await service.create_batch([JobSpec(job_type="noop", payload={"n": i}) for i in range(60)])
    group_batches = lambda: sum(c.batches for c in service._acquirers.values())  # noqa: E731
    before = group_batches()
    leases = await asyncio.gather(*(service.acquire(f"w{i % 7}") for i in range(80)))
    got = [lease for lease in leases if lease is not None]
    assert len(got) == 60  # 20 callers found nothing left
    assert len({lease.job_id for lease in got}) == 60
    assert group_batches() - before < 80
    for lease in got:
        row = await service.pool.fetchrow("SELECT worker_id, lease_token FROM jobs"
                                          " WHERE id = $1::uuid", lease.job_id)
        assert (row["worker_id"], row["lease_token"]) == (lease.worker_id, lease.token)


async def test_a_large_batch_streamed_with_copy_stores_every_field(
        service: JobService) -> None:
    from core.store.inserts import COPY_MIN_JOBS

    specs = [JobSpec(job_type="noop", priority=1 + i % 5, max_retries=i % 7,
                     timeout_s=1.5 + i, required_capability="gpu" if i % 10 == 0 else None,
                     payload={"i": i, "text": 'a "quoted", multi\nline value'},
                     tenant=None if i % 3 == 0 else f"tenant,{i % 3}")
             for i in range(COPY_MIN_JOBS + 50)]
    created = await service.create_batch(specs)
    assert all(c.status == JobStatus.PENDING and c.created for c in created)
    rows = {str(r["id"]): r for r in await service.pool.fetch("SELECT * FROM jobs")}
    for spec, c in zip(specs, created, strict=True):
        row = rows[c.job_id]
        assert (row["priority"], row["max_retries"], row["timeout_s"],
                row["required_capability"], row["payload"], row["status"], row["tenant"]) == (
            spec.priority, spec.max_retries, spec.timeout_s, spec.required_capability,
            spec.payload, "PENDING", spec.tenant)
    cpu = await service.acquire_many("cpu", 1000)
    assert len(cpu) == len(specs) - 15  # every job but the 15 that need a gpu
    assert not any(rows[lease.job_id]["required_capability"] for lease in cpu)
    gpu = await service.acquire_many("g", 1000, ["gpu"])
    assert {rows[lease.job_id]["required_capability"] for lease in gpu} == {"gpu"}
    assert len(gpu) == 15


async def test_a_job_keeps_its_tenant_and_an_idempotent_retry_must_name_the_same(
        service: JobService) -> None:
    from core.errors import IdempotencyConflict

    small = await service.create_batch([JobSpec(job_type="noop", tenant="acme")])  # INSERT
    single = await service.create(JobSpec(job_type="noop", tenant="globex"))  # merged INSERT
    keyed = await service.create(JobSpec(job_type="noop", tenant="acme", idempotency_key="k"))
    assert (await service.get(small[0].job_id)).tenant == "acme"
    assert (await service.get(single.job_id)).tenant == "globex"
    assert (await service.get(keyed.job_id)).tenant == "acme"
    again = await service.create(JobSpec(job_type="noop", tenant="acme", idempotency_key="k"))
    assert (again.job_id, again.created) == (keyed.job_id, False)
    with pytest.raises(IdempotencyConflict):  # the same key, another spec: acme's own job
        await service.create(JobSpec(job_type="noop", tenant="acme", idempotency_key="k",
                                     payload={"other": 1}))
    # keys are a tenant's own: globex's "k" is another job, and never reveals acme's
    theirs = await service.create(JobSpec(job_type="noop", tenant="globex", idempotency_key="k",
                                          payload={"other": 1}))
    assert theirs.created
    assert theirs.job_id != keyed.job_id
    untagged = await service.create(JobSpec(job_type="noop"))
    assert (await service.get(untagged.job_id)).tenant is None


async def test_failure_retry_then_dead_letter(service: JobService) -> None:
    created = await service.create(JobSpec(job_type="flaky", max_retries=2, priority=3))
    outcomes = []
    for _ in range(3):
        lease = await service.acquire("w1")
        while lease is None:  # a retry waits in the delayed set for its backoff
            await service.wait_for_work(1.0)
            lease = await service.acquire("w1")
        outcomes.append(await service.fail(lease.job_id, lease.token, f"boom {lease.attempt}"))
    assert [o.status for o in outcomes] == [JobStatus.PENDING, JobStatus.PENDING, JobStatus.DEAD]
    assert all(o.retry_in_s is not None and o.retry_in_s <= 0.5 for o in outcomes[:2])
    job = await service.get(created.job_id)
    assert job.status == JobStatus.DEAD
    assert job.retry_count == 2
    assert job.last_error == "boom 3"
    exs = await executions(service, created.job_id)
    assert [e["attempt"] for e in exs] == [1, 2, 3]
    assert {e["status"] for e in exs} == {"FAILED"}
    (entry,) = await service.dlq_list()
    assert entry["job_id"] == created.job_id
    assert entry["error"] == "boom 3"
    snap = await service.pool.fetchval("SELECT job_snapshot FROM dead_letter_queue")
    assert snap["id"] == created.job_id
    assert snap["status"] == "DEAD"
    assert (await service.dispatch.depths())["dead_letter"] == 1


async def test_backoff_spaces_retries(service: JobService) -> None:
    # a 30 s backoff: "not runnable yet" holds for far longer than any scheduler stall (the
    # suite's fast 50 ms backoff would leave a window a loaded machine can miss)
    slow = JobService(service.pool, service.dispatch, replace(
        service.settings, backoff=BackoffPolicy(base_s=30.0, max_s=60.0, jitter_s=0.0)))
    await slow.create(JobSpec(job_type="flaky", max_retries=1))
    lease = await slow.acquire("w1")
    assert lease is not None
    outcome = await slow.fail(lease.job_id, lease.token, "first")
    assert outcome.retry_in_s == 30.0
    # Not runnable before its backoff elapses (PostgreSQL agrees with Redis).
    assert await slow.acquire("w1") is None
    row = await slow.pool.fetchrow(
        "SELECT run_at > clock_timestamp() + interval '20 seconds' AS later, status"
        " FROM jobs WHERE id = $1", uuid.UUID(lease.job_id))
    assert row["later"]
    assert row["status"] == "PENDING"
    assert (await slow.dispatch.depths())["delayed"] == 1


async def test_concurrent_workers_run_each_job_once(service: JobService) -> None:
    jobs = await service.create_batch([JobSpec(job_type="sleep", payload={"ms": 5})
                                       for _ in range(50)])
    ran: list[str] = []

    async def recording(payload: dict[str, Any]) -> None:
        ran.append(payload["_job_id"])
        await asyncio.sleep(0.005)

    handlers = {**BUILTIN_HANDLERS, "sleep": recording}
    workers = [Worker(service, f"w{i}", handlers, concurrency=2) for i in range(5)]
    stop = asyncio.Event()
    tasks = [asyncio.create_task(w.run(stop)) for w in workers]

    async def all_done() -> bool:
        return (await service.counts())["COMPLETED"] == 50

    await wait_until(all_done, what="50 completions")
    stop.set()
    await asyncio.gather(*tasks)
    assert sorted(ran) == sorted(j.job_id for j in jobs)  # none lost, none twice
    n = await service.pool.fetchval("SELECT count(*) FROM job_executions")
    assert n == 50
    per_worker = [w.stats["complete"] for w in workers]
    assert sum(per_worker) == 50


async def test_priority_order_and_fifo(service: JobService) -> None:
    rng = random.Random(5)
    prios = [rng.randint(1, 5) for _ in range(40)]
    created, spans = [], []
    for p in prios:
        t0 = time.monotonic()
        created.append(await service.create(JobSpec(job_type="noop", priority=p)))
        spans.append((t0, time.monotonic()))
    order = []
    while (lease := await service.acquire("w1")) is not None:
        order.append(lease)
    assert [lease.priority for lease in order] == sorted(prios, reverse=True)
    # FIFO within a priority, at the dispatch index's clock resolution (1 ms; two jobs queued
    # in the same millisecond tie and come in id order): a job whose create returned more
    # than 2 ms before another's began must be leased first.
    position = {lease.job_id: i for i, lease in enumerate(order)}
    judged = 0
    for i, (a, pa) in enumerate(zip(created, prios, strict=True)):
        for j in range(i + 1, len(created)):
            if prios[j] == pa and spans[i][1] + 0.002 < spans[j][0]:
                judged += 1
                assert position[a.job_id] < position[created[j].job_id]
    assert judged > 0


async def test_capability_matching(service: JobService) -> None:
    gpu = await service.create(JobSpec(job_type="noop", required_capability="gpu", priority=5))
    plain = await service.create(JobSpec(job_type="noop", priority=1))
    lease = await service.acquire("cpu-worker", ["cpu"])
    assert lease is not None
    assert lease.job_id == plain.job_id
    assert await service.acquire("cpu-worker", ["cpu"]) is None
    lease = await service.acquire("gpu-worker", ["gpu"])
    assert lease is not None
    assert lease.job_id == gpu.job_id


async def test_cancel_queued_job(service: JobService) -> None:
    created = await service.create(JobSpec(job_type="noop"))
    assert await service.cancel(created.job_id, "not needed") == JobStatus.CANCELLED
    job = await service.get(created.job_id)
    assert job.status == JobStatus.CANCELLED
    assert job.cancel_reason == "not needed"
    assert await service.acquire("w1") is None
    assert sum((await service.dispatch.depths()).values()) == 0
    with pytest.raises(InvalidTransition):
        await service.cancel(created.job_id)


async def test_cancel_running_job_cooperatively(service: JobService) -> None:
    started = asyncio.Event()

    async def slow(payload: dict[str, Any]) -> None:
        started.set()
        await asyncio.Event().wait()

    created = await service.create(JobSpec(job_type="hang"))
    worker = Worker(service, "w1", {"hang": slow}, lease_s=0.3)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    await asyncio.wait_for(started.wait(), 10)
    assert await service.cancel(created.job_id, "operator said so") == JobStatus.PROCESSING

    async def cancelled() -> bool:
        return (await service.get(created.job_id)).status == JobStatus.CANCELLED

    await wait_until(cancelled, what="cooperative cancellation")
    stop.set()
    await task
    (ex,) = await executions(service, created.job_id)
    assert ex["status"] == ExecutionStatus.CANCELLED
    assert (await service.get(created.job_id)).cancel_reason == "operator said so"


async def test_timeout_fails_the_attempt(service: JobService) -> None:
    created = await service.create(JobSpec(job_type="hang", timeout_s=0.2, max_retries=1))
    worker = Worker(service, "w1", BUILTIN_HANDLERS)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))

    async def dead() -> bool:
        return (await service.get(created.job_id)).status == JobStatus.DEAD

    await wait_until(dead, what="timed-out job to die")
    stop.set()
    await task
    exs = await executions(service, created.job_id)
    assert [e["status"] for e in exs] == ["TIMED_OUT", "TIMED_OUT"]
    assert "timed out after 0.2 s" in (await service.get(created.job_id)).last_error


async def test_lease_extension_keeps_long_job(service: JobService) -> None:
    created = await service.create(JobSpec(job_type="sleep", payload={"ms": 700}))
    worker = Worker(service, "w1", BUILTIN_HANDLERS, lease_s=0.3)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))

    async def done() -> bool:
        return (await service.get(created.job_id)).status == JobStatus.COMPLETED

    await wait_until(done, what="long job to complete")
    stop.set()
    await task
    (ex,) = await executions(service, created.job_id)
    assert ex["status"] == "COMPLETED"
    assert ex["duration_ms"] >= 700


async def test_stale_token_is_rejected_and_changes_nothing(service: JobService) -> None:
    created = await service.create(JobSpec(job_type="noop", max_retries=3))
    old = await service.acquire("zombie", lease_s=0.1)
    assert old is not None
    from core.service.reconciler import Reconciler

    async def expired() -> bool:
        return bool(await service.pool.fetchval(
            "SELECT lease_expires_at < clock_timestamp() FROM jobs"))

    await wait_until(expired, what="lease expiry")
    report = await Reconciler(service).run_once()
    assert report.leases_expired == 1
    before = dict(await service.pool.fetchrow("SELECT * FROM jobs"))
    with pytest.raises(StaleLease) as info:
        await service.complete(old.job_id, old.token, {"late": True})
    assert info.value.token == old.token
    with pytest.raises(StaleLease):
        await service.fail(old.job_id, old.token, "late failure")
    with pytest.raises(StaleLease):
        await service.extend(old.job_id, old.token)
    after = dict(await service.pool.fetchrow("SELECT * FROM jobs"))
    assert before == after
    assert after["status"] == "PENDING"
    assert after["result"] is None
    assert service.stats["stale_rejected"] == 3
    new = await service.acquire("healthy")
    while new is None:
        await service.wait_for_work(1.0)
        new = await service.acquire("healthy")
    assert new.token > old.token
    assert new.attempt == 2
    await service.complete(new.job_id, new.token)
    exs = await executions(service, created.job_id)
    assert [e["status"] for e in exs] == ["LEASE_EXPIRED", "COMPLETED"]


async def test_delayed_job_waits_until_due(service: JobService) -> None:
    await service.create(JobSpec(job_type="noop", delay_s=0.3))
    assert await service.acquire("w1") is None
    assert (await service.dispatch.depths())["delayed"] == 1
    lease = None
    while lease is None:
        await service.wait_for_work(1.0)
        lease = await service.acquire("w1")
    row = await service.pool.fetchrow(
        "SELECT started_at >= run_at AS on_time FROM jobs WHERE id = $1",
        uuid.UUID(lease.job_id),
    )
    assert row["on_time"]


async def test_idempotency_key(service: JobService) -> None:
    from core.errors import IdempotencyConflict

    a = await service.create(JobSpec(job_type="noop", payload={"x": 1}, idempotency_key="k1"))
    b = await service.create(JobSpec(job_type="noop", payload={"x": 1}, idempotency_key="k1"))
    assert a.job_id == b.job_id
    assert a.created
    assert not b.created
    with pytest.raises(IdempotencyConflict):
        await service.create(JobSpec(job_type="noop", payload={"x": 2}, idempotency_key="k1"))
    # when the job may start is part of what the key names
    with pytest.raises(IdempotencyConflict):
        await service.create(JobSpec(job_type="noop", payload={"x": 1}, idempotency_key="k1",
                                     delay_s=60))
    later = datetime.now(UTC) + timedelta(hours=1)
    c = await service.create(JobSpec(job_type="noop", idempotency_key="k2", run_at=later))
    with pytest.raises(IdempotencyConflict):
        await service.create(JobSpec(job_type="noop", idempotency_key="k2",
                                     run_at=later + timedelta(minutes=1)))
    same = await service.create(JobSpec(job_type="noop", idempotency_key="k2", run_at=later))
    assert (same.job_id, same.created) == (c.job_id, False)
    assert await service.pool.fetchval("SELECT count(*) FROM jobs") == 2


async def test_concurrent_idempotent_creates_make_one_job(service: JobService) -> None:
    spec = JobSpec(job_type="noop", idempotency_key="race")
    results = await asyncio.gather(*(service.create(spec) for _ in range(8)))
    assert len({r.job_id for r in results}) == 1
    assert sum(r.created for r in results) == 1
    assert await service.pool.fetchval("SELECT count(*) FROM jobs") == 1


async def test_dead_letter_requeue_and_purge(service: JobService) -> None:
    created = await service.create(JobSpec(job_type="flaky", max_retries=0))
    lease = await service.acquire("w1")
    assert lease is not None
    await service.fail(lease.job_id, lease.token, "boom")
    await service.dlq_requeue(created.job_id)
    job = await service.get(created.job_id)
    assert job.status == JobStatus.PENDING
    assert job.retry_count == 0
    assert await service.dlq_list() == []
    assert (await service.dispatch.depths())["dead_letter"] == 0
    lease = await service.acquire("w1")
    assert lease is not None
    assert lease.attempt == 1
    await service.fail(lease.job_id, lease.token, "boom again")
    assert await service.dlq_purge() == 0  # within the 30-day retention
    # Purge removes the live entry and the requeued one kept as history.
    assert await service.dlq_purge(older_than_s=0) == 2
    assert await service.dlq_list() == []
    assert await service.pool.fetchval("SELECT count(*) FROM dead_letter_queue") == 0
    with pytest.raises(InvalidTransition):
        await service.dlq_requeue(created.job_id)


async def test_a_worker_lost_after_a_cancel_request_ends_the_job_cancelled(
        service: JobService) -> None:
    """The cancel was asked while the job ran; its worker then vanished (no report). When
    its lease runs out the job is CANCELLED as asked, not retried, and not run again."""
    from core.service.reconciler import Reconciler

    created = await service.create(JobSpec(job_type="noop", max_retries=5))
    lease = await service.acquire("w-lost", lease_s=0.2)
    assert lease is not None
    assert await service.cancel(created.job_id, "operator said so") == JobStatus.PROCESSING

    async def expired() -> bool:
        row = await service.pool.fetchrow(
            "SELECT lease_expires_at < clock_timestamp() AS gone FROM jobs WHERE id = $1",
            uuid.UUID(created.job_id))
        return bool(row["gone"])

    await wait_until(expired, what="the lost worker's lease to run out")  # PostgreSQL's clock
    report = await Reconciler(service).run_once()
    assert report.leases_expired == 1
    job = await service.get(created.job_id)
    assert job.status == JobStatus.CANCELLED
    assert job.cancel_reason == "operator said so"
    assert job.retry_count == 0  # no retry was scheduled
    assert await service.acquire("w2") is None
    with pytest.raises(StaleLease):  # the lost worker's late report changes nothing
        await service.complete(lease.job_id, lease.token)


async def test_racing_idempotent_creates_with_one_key_make_one_job(
        service: JobService) -> None:
    """Twenty creates race with one idempotency key, half of them with another payload: one
    job exists, the same spec gets it back, a different spec gets a conflict naming the key,
    and nothing half-written is left."""
    from core.errors import IdempotencyConflict

    def spec(n: int) -> JobSpec:
        return JobSpec(job_type="noop", idempotency_key="race", payload={"n": n % 2})

    results = await asyncio.gather(*(service.create(spec(n)) for n in range(20)),
                                   return_exceptions=True)
    made = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BaseException)]
    assert all(isinstance(r, IdempotencyConflict) for r in refused), refused
    assert len({r.job_id for r in made}) == 1  # one job, whoever won
    assert sum(r.created for r in made) == 1
    assert (len(made), len(refused)) == (10, 10)  # the winner's half, and the other
    assert all("race" in str(r) for r in refused)
    rows = await service.pool.fetchval("SELECT count(*) FROM jobs WHERE idempotency_key = 'race'")
    assert rows == 1


@pytest.mark.parametrize(("spend_retry", "retries", "execution"), [
    (True, 1, "LEASE_EXPIRED"),  # a lost worker: the job may be what kills its workers
    (False, 0, "RELEASED"),  # a quarantined one: the job did nothing wrong
])
async def test_a_lost_workers_leases_go_back_with_or_without_a_retry_spent(
    service: JobService, spend_retry: bool, retries: int, execution: str,
) -> None:
    created = await service.create(JobSpec(job_type="noop"))
    lease = await service.acquire("w-lost")
    assert lease is not None
    assert await service.release_worker("w-lost", "worker lost: test",
                                        spend_retry=spend_retry) == 1
    row = await service.pool.fetchrow(
        "SELECT j.status, j.retry_count, e.status AS execution FROM jobs j "
        "JOIN job_executions e ON e.job_id = j.id WHERE j.id = $1::uuid", created.job_id)
    assert dict(row) == {"status": "PENDING", "retry_count": retries, "execution": execution}
    if not spend_retry:  # back in the dispatch index at once
        again = await service.acquire("w-next")
        assert again is not None
        assert again.job_id == created.job_id
