"""Byzantine workers: one that completes with forged lease tokens, one that heartbeats and
makes no progress, one that claims a capability it cannot serve, and an impostor taking a live
worker's id. Each is detected (evidence naming the worker), its effect refused, and a worker
that keeps misbehaving quarantined (no more leases) and replaced. Real worker processes; the
misbehaviour is switched on in a running worker as a drill does (spec file + SIGUSR1)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from core.errors import WorkerIdInUse
from core.jobs.model import JobSpec
from core.service.jobs import JobService
from core.supervisor.supervisor import Supervisor
from core.worker.faults import FaultSpec
from tests.conftest import wait_until
from tests.integration.test_processes import proc_settings, supervising, svc  # noqa: F401


async def _status(js: JobService, worker_id: str) -> str | None:
    return await js.pool.fetchval("SELECT status FROM workers WHERE id = $1", worker_id)


async def _evidence(js: JobService, worker_id: str) -> dict[str, int]:
    rows = await js.pool.fetch("SELECT kind, count(*) AS n FROM worker_evidence"
                               " WHERE worker_id = $1 GROUP BY kind", worker_id)
    return {r["kind"]: r["n"] for r in rows}


async def _done(js: JobService, ids: list[str]) -> bool:
    n = await js.pool.fetchval("SELECT count(*) FROM jobs WHERE id = ANY($1::uuid[])"
                               " AND status = 'COMPLETED'", ids)
    return bool(n == len(ids))


async def _completed_by(js: JobService, worker_id: str) -> int:
    return int(await js.pool.fetchval("SELECT count(*) FROM job_executions WHERE worker_id = $1"
                                      " AND status = 'COMPLETED'", worker_id))


async def _twice(js: JobService) -> int:
    return int(await js.pool.fetchval(
        "SELECT count(*) FROM (SELECT job_id FROM job_executions WHERE status = 'COMPLETED'"
        " GROUP BY job_id HAVING count(*) > 1) d"))


async def _quarantined_and_replaced(js: JobService, sup: Supervisor, bad: str, kind: str
                                    ) -> None:
    async def quarantined() -> bool:
        return await _status(js, bad) == "QUARANTINED"

    async def replaced() -> bool:
        return any(e["old"] == bad for e in sup.events)

    await wait_until(quarantined, timeout_s=40, what=f"{bad} quarantined")
    await wait_until(replaced, what=f"{bad} replaced")
    event = next(e for e in sup.events if e["old"] == bad)
    assert event["reason"].startswith("quarantined:")
    assert kind in event["reason"]
    assert bad not in {s.worker_id for s in sup.slots.values()}  # a successor took its slot
    assert sup.stats["quarantined"] >= 1
    # a quarantined worker gets no lease, whatever it asks for; anyone else would
    job = (await js.create(JobSpec(job_type="noop", required_capability="probe"))).job_id
    assert await js.acquire_many(bad, 1, ("probe",), lease_s=2) == []
    assert await js.pool.fetchval("SELECT status FROM jobs WHERE id = $1::uuid", job) == \
        "PENDING"
    await js.register_worker(f"probe-{bad}", ("probe",), hostname="test", pid=1)
    got: list[str] = []

    async def honest_gets_it() -> bool:
        got.extend(x.job_id for x in await js.acquire_many(f"probe-{bad}", 1, ("probe",),
                                                             lease_s=2))
        return bool(got)

    await wait_until(honest_gets_it, what="the job leased by a worker in good standing")
    assert got == [job]


@pytest.mark.parametrize(("mode", "kind"), [("forge", "forged_token"), ("idle", "no_progress")])
async def test_a_worker_that_forges_tokens_or_makes_no_progress_is_quarantined(
        svc: JobService, mode: str, kind: str) -> None:  # noqa: F811
    async with supervising(svc, workers=2) as sup:
        bad = sup.slots[0].worker_id
        sup.inject_fault(bad, FaultSpec(mode=mode))
        ids = [(await svc.create(JobSpec(job_type="sleep", payload={"ms": 100},
                                         max_retries=8))).job_id for _ in range(16)]
        await wait_until(lambda: _done(svc, ids), timeout_s=60,
                         what="every job completed by an honest worker")
        await _quarantined_and_replaced(svc, sup, bad, kind)
        evidence = await _evidence(svc, bad)
        assert evidence.get(kind, 0) >= 1, evidence
        assert await _completed_by(svc, bad) == 0  # nothing was completed by the misbehaver
        assert await _twice(svc) == 0
        honest = sup.slots[1].worker_id
        assert await _evidence(svc, honest) == {}  # the honest worker is never accused
        assert await _status(svc, honest) == "ACTIVE"


async def test_a_worker_claiming_a_capability_it_cannot_serve_is_quarantined(
        svc: JobService) -> None:  # noqa: F811
    settings = replace(svc.settings, job_types=svc.settings.job_types | {"render"})
    js = JobService(svc.pool, svc.dispatch, settings)
    render = {"render": "core.worker.handlers:noop"}
    async with supervising(js, workers=1, name="gpu", capabilities=("gpu",),
                           handlers=render) as gpu, \
            supervising(js, workers=1, name="plain") as plain:
        liar = plain.slots[0].worker_id
        plain.inject_fault(liar, FaultSpec(mode="liar", capability="gpu"))
        ids = [(await js.create(JobSpec(job_type="render", required_capability="gpu")
                                )).job_id for _ in range(20)]
        await wait_until(lambda: _done(js, ids), timeout_s=60, what="render jobs done")
        await _quarantined_and_replaced(js, plain, liar, "false_capability")
        assert (await _evidence(js, liar)).get("false_capability", 0) >= 1
        # what the liar took went back without spending a retry
        spent = await js.pool.fetchval("SELECT max(retry_count) FROM jobs"
                                       " WHERE id = ANY($1::uuid[])", ids)
        assert spent == 0
        assert await _completed_by(js, liar) == 0
        assert gpu.stats["quarantined"] == 0


async def test_an_impostor_cannot_take_a_live_worker_id(svc: JobService) -> None:  # noqa: F811
    async with supervising(svc, workers=1) as sup:
        victim = sup.slots[0].worker_id
        before = await svc.pool.fetchrow("SELECT pid, hostname, status FROM workers"
                                         " WHERE id = $1", victim)
        with pytest.raises(WorkerIdInUse, match=victim):
            await svc.register_worker(victim, ("gpu",), hostname="elsewhere", pid=999_999)
        after = await svc.pool.fetchrow("SELECT pid, hostname, status FROM workers"
                                        " WHERE id = $1", victim)
        assert dict(after) == dict(before)  # the live worker was not displaced
        assert await _evidence(svc, victim) == {"id_taken": 1}
        checks = sup.stats["checks"]

        async def rounds_later() -> bool:
            return sup.stats["checks"] >= checks + 3

        await wait_until(rounds_later, what="three supervisor rounds")
        assert sup.stats["replacements"] == 0  # the victim is not held to the impostor's act
        assert await _status(svc, victim) == "ACTIVE"
    # an id whose worker is gone (stopped) may be taken over
    await svc.register_worker(victim, (), hostname="elsewhere", pid=999_999)
    assert await _status(svc, victim) == "ACTIVE"
