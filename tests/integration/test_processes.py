"""Real worker processes under a real supervisor, killed, paused and drained with real signals."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from core.infra.embedded import pid_alive
from core.jobs.model import JobSpec, JobStatus
from core.service.jobs import JobService
from core.service.runtime import create_dispatch
from core.settings import Settings, to_env
from core.store.pools import create_pool
from core.supervisor.supervisor import Supervisor, SupervisorOptions
from tests.conftest import wait_until


@pytest.fixture
def proc_settings(settings: Settings, tmp_path: Path) -> Settings:
    """Seconds-scale liveness so drills finish quickly."""
    return replace(settings, heartbeat_interval_s=0.3, heartbeat_ttl_s=1.5, lease_s=1.5,
                   data_dir=tmp_path)


@pytest.fixture
async def svc(proc_settings: Settings) -> AsyncIterator[JobService]:
    pool = await create_pool(proc_settings, max_size=6)
    dispatch = create_dispatch(proc_settings, max_connections=6)
    try:
        yield JobService(pool, dispatch, proc_settings)
    finally:
        await dispatch.flush_prefix()
        await dispatch.close()
        await pool.close()


@contextlib.asynccontextmanager
async def supervising(svc: JobService, predictor: Any = None, **opts: Any
                      ) -> AsyncIterator[Supervisor]:
    """A supervisor running in this event loop over real worker processes."""
    options = SupervisorOptions(**{"check_interval_s": 0.2, "zombie_grace_s": 60.0,
                                   "drain_timeout_s": 2.0, "reconcile_interval_s": 0.5,
                                   **opts})
    sup = Supervisor(svc, svc.settings, options, predictor)
    stop = asyncio.Event()
    await sup.start()
    runner = asyncio.create_task(sup.run(stop))
    try:
        await wait_until(lambda: all_registered(svc, sup), what="workers registered")
        yield sup
    finally:
        stop.set()
        await runner


async def all_registered(svc: JobService, sup: Supervisor) -> bool:
    ids = [s.worker_id for s in sup.slots.values()]
    rows = await svc.pool.fetch("SELECT status FROM workers WHERE id = ANY($1)", ids)
    return len(rows) == len(ids) and all(r["status"] == "ACTIVE" for r in rows)


async def job_row(svc: JobService, job_id: str) -> dict[str, Any]:
    return dict(await svc.pool.fetchrow("SELECT * FROM jobs WHERE id = $1::uuid", job_id))


async def executions(svc: JobService, job_id: str) -> list[dict[str, Any]]:
    rows = await svc.pool.fetch(
        "SELECT * FROM job_executions WHERE job_id = $1::uuid ORDER BY id", job_id)
    return [dict(r) for r in rows]


async def holder(svc: JobService, job_id: str) -> str | None:
    row = await job_row(svc, job_id)
    return row["worker_id"] if row["status"] == JobStatus.PROCESSING else None


@pytest.mark.parametrize("spawn", ["forkserver", "exec"])
async def test_sigkill_mid_job_runs_it_elsewhere_exactly_once(svc: JobService, spawn: str
                                                               ) -> None:
    async with supervising(svc, workers=3, spawn=spawn) as sup:
        job = await svc.create(JobSpec(job_type="sleep", payload={"ms": 1500}))
        await wait_until(lambda: _is_held(svc, job.job_id), what="job leased")
        victim = await holder(svc, job.job_id)
        assert victim is not None
        sup.signal_worker(victim, "kill")
        await wait_until(lambda: _status_is(svc, job.job_id, "COMPLETED"), what="completion")
        exs = await executions(svc, job.job_id)
        assert [e["status"] for e in exs] == ["LEASE_EXPIRED", "COMPLETED"]
        assert exs[0]["worker_id"] == victim
        assert exs[1]["worker_id"] != victim
        row = await svc.pool.fetchrow("SELECT status, failure_reason FROM workers WHERE id = $1",
                                      victim)
        assert row["status"] == "FAILED"
        assert row["failure_reason"] == "process killed by signal 9"
        assert sup.stats["replacements"] == 1
        (event,) = sup.events
        assert event["old"] == victim
        assert event["released_jobs"] == 1
        await wait_until(lambda: all_registered(svc, sup), what="replacement registered")
        assert len(sup.slots) == 3


async def _is_held(svc: JobService, job_id: str) -> bool:
    return await holder(svc, job_id) is not None


async def _status_is(svc: JobService, job_id: str, status: str) -> bool:
    return (await job_row(svc, job_id))["status"] == status


async def spawn_worker(settings: Settings, worker_id: str, *args: str
                       ) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "core.cli", "worker", "--id", worker_id, *args,
        env={**os.environ, **to_env(settings)}, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)


async def test_sigterm_drains_the_running_job(svc: JobService) -> None:
    job = await svc.create(JobSpec(job_type="sleep", payload={"ms": 800}))
    proc = await spawn_worker(svc.settings, "drainer")
    await wait_until(lambda: _is_held(svc, job.job_id), what="job leased")
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), 20) == 0
    assert (await job_row(svc, job.job_id))["status"] == "COMPLETED"  # finished, not dropped
    row = await svc.pool.fetchrow("SELECT status FROM workers WHERE id = 'drainer'")
    assert row["status"] == "STOPPED"
    assert not await svc.dispatch._client.exists(svc.dispatch.keys.heartbeat("drainer"))


async def test_sigterm_releases_a_job_that_outlives_the_drain(svc: JobService) -> None:
    job = await svc.create(JobSpec(job_type="hang", max_retries=2))
    proc = await spawn_worker(svc.settings, "short-drain", "--drain-timeout-s", "0.3")
    await wait_until(lambda: _is_held(svc, job.job_id), what="job leased")
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), 20) == 0
    row = await job_row(svc, job.job_id)
    assert row["status"] == "PENDING"
    assert row["retry_count"] == 0
    assert [e["status"] for e in await executions(svc, job.job_id)] == ["RELEASED"]


async def test_a_host_frozen_with_its_supervisor_replaces_nobody(svc: JobService) -> None:
    """The host freezes (the workers and the supervisor stop together, for three heartbeat
    TTLs) and thaws: when the supervisor looks again every heartbeat is stale, but the stall
    was its own as well, so it judges nobody for a TTL, in which every worker beats again
    (core/supervisor/vigil.py); nobody is replaced."""
    async with supervising(svc, workers=2) as sup:
        pids = [s.proc.pid for s in sup.slots.values()]
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        # the freeze itself (the fault under test, not a wait): this event loop, which runs
        # the supervisor, is blocked while its workers are stopped
        time.sleep(3 * svc.settings.heartbeat_ttl_s)  # noqa: ASYNC251
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
        then = sup.stats["checks"]
        rounds = 2 * svc.settings.heartbeat_ttl_s / sup.opts.check_interval_s + 2

        async def two_ttls_of_rounds() -> bool:
            return sup.stats["checks"] >= then + rounds

        await wait_until(two_ttls_of_rounds, what="two TTLs of the supervisor's rounds")
        assert sup.stats["watch_gaps"] >= 1
        assert sup.stats["heartbeat_timeouts"] == 0, sup.events
        assert [s.proc.pid for s in sup.slots.values()] == pids


async def test_paused_worker_is_replaced_and_its_late_result_rejected(svc: JobService) -> None:
    async with supervising(svc, workers=2) as sup:
        job = await svc.create(JobSpec(job_type="sleep", payload={"ms": 2500}))
        await wait_until(lambda: _is_held(svc, job.job_id), what="job leased")
        zombie = await holder(svc, job.job_id)
        assert zombie is not None
        sup.signal_worker(zombie, "pause")
        await wait_until(lambda: _status_is(svc, job.job_id, "COMPLETED"), timeout_s=40,
                         what="the job to complete on the other worker")
        assert sup.stats["heartbeat_timeouts"] >= 1
        reason = await svc.pool.fetchval("SELECT failure_reason FROM workers WHERE id = $1",
                                         zombie)
        assert reason.startswith("heartbeat timed out")
        sup.signal_worker(zombie, "resume")  # it wakes up holding a lease it lost

        async def zombie_gone() -> bool:
            return all(p.returncode is not None for p, _, w in sup.abandoned if w == zombie)

        await wait_until(zombie_gone, what="the zombie to exit")
        counts = await svc.dispatch.event_counts()
        assert counts.get("stale_rejected", 0) >= 1
        exs = await executions(svc, job.job_id)
        assert [e["status"] for e in exs].count("COMPLETED") == 1
        assert exs[0]["worker_id"] == zombie
        assert exs[0]["status"] == "LEASE_EXPIRED"
        result = (await job_row(svc, job.job_id))["worker_id"]
        assert result != zombie
        status = await svc.pool.fetchval("SELECT status FROM workers WHERE id = $1", zombie)
        assert status == "FAILED"  # its exit did not overwrite the verdict


async def test_twenty_workers_replace_five_killed_at_once(svc: JobService) -> None:
    async with supervising(svc, workers=20, max_replacements=10) as sup:
        victims = sorted(s.worker_id for s in sup.slots.values())[:5]
        for wid in victims:
            sup.signal_worker(wid, "kill")

        async def replaced() -> bool:
            return sup.stats["replacements"] == 5 and await all_registered(svc, sup)

        await wait_until(replaced, timeout_s=60, what="5 replacements registered")
        failed = await svc.pool.fetch("SELECT id FROM workers WHERE status = 'FAILED'")
        assert sorted(r["id"] for r in failed) == victims
        assert len(sup.slots) == 20
        assert sum(s.generation for s in sup.slots.values()) == 5


async def test_redis_outage_longer_than_ttl_replaces_nobody(
    proc_settings: Settings, svc: JobService
) -> None:
    from core.infra.embedded import free_port, valkey_bin

    port = free_port()
    redis_dir = proc_settings.data_dir / "own-valkey"
    redis_dir.mkdir()
    cmd = [str(valkey_bin()), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
           "--appendonly", "no", "--dir", str(redis_dir)]
    server = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.DEVNULL)
    own = replace(proc_settings, redis_url=f"redis://127.0.0.1:{port}/0", redis_timeout_s=0.2)
    own_svc = JobService(svc.pool, create_dispatch(own), own)
    await wait_until(own_svc.dispatch.ping, what="private Redis up")
    try:
        async with supervising(own_svc, workers=3) as sup:
            server.terminate()  # Redis goes away for longer than the heartbeat TTL
            await server.wait()
            checks = sup.stats["checks"]
            outage_s = own.heartbeat_ttl_s * 3
            await asyncio.sleep(outage_s)  # the scenario: an outage that lasts this long
            assert sup.stats["checks"] > checks + 5
            assert sup.stats["replacements"] == 0
            assert await all_registered(own_svc, sup)
            job = await own_svc.create(JobSpec(job_type="noop"))  # commits without Redis
            await wait_until(lambda: _status_is(own_svc, job.job_id, "COMPLETED"),
                             what="a job processed through PostgreSQL during the outage")
    finally:
        if server.returncode is None:
            server.kill()
            await server.wait()
        own_svc.dispatch.reset_breaker()
        await own_svc.dispatch.close()


async def test_capability_routing_and_load_spread(svc: JobService) -> None:
    async with supervising(svc, workers=1, name="gpu", capabilities=("gpu",)) as gpu, \
            supervising(svc, workers=4, name="cpu") as cpu:
        gpu_jobs = await svc.create_batch([JobSpec(job_type="noop", required_capability="gpu")
                                           for _ in range(10)])
        plain = await svc.create_batch([JobSpec(job_type="sleep", payload={"ms": 20})
                                        for _ in range(120)])

        async def all_done() -> bool:
            return (await svc.counts())["COMPLETED"] == 130

        await wait_until(all_done, timeout_s=60, what="130 completions")
        gpu_ids = {s.worker_id for s in gpu.slots.values()}
        for job in gpu_jobs:
            assert (await job_row(svc, job.job_id))["worker_id"] in gpu_ids
        per_worker = collections.Counter(
            [(await job_row(svc, j.job_id))["worker_id"] for j in plain])
        cpu_ids = {s.worker_id for s in cpu.slots.values()}
        assert cpu_ids <= set(per_worker)  # every plain worker took a share
        fair = 120 / 5
        assert min(per_worker[w] for w in cpu_ids) >= fair / 4, per_worker


async def _start(settings: Settings, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "core.cli", *args, env={**os.environ, **to_env(settings)},
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL)


@pytest.mark.parametrize("with_owner", [True, False])
async def test_restarted_supervisor_restores_its_roster(
    svc: JobService, proc_settings: Settings, with_owner: bool
) -> None:
    from core.memory.events import MemoryEmitter
    from core.supervisor.roster import roster_key

    owner = await _start(proc_settings, "state", "serve", "--nice", "0") if with_owner \
        else None
    crashed = await _start(proc_settings, "supervisor", "--workers", "2", "--name", "r1",
                           "--check-interval-s", "0.2")
    try:
        async def old_workers() -> list[Any]:
            return await svc.pool.fetch(
                "SELECT id, pid FROM workers WHERE status = 'ACTIVE' ORDER BY id")

        await wait_until(lambda: _count_is(old_workers, 2), what="first supervisor's workers")
        old = {r["id"]: r["pid"] for r in await old_workers()}
        if owner is not None:
            from core.cli.state import ask_owner, owner_url

            async def roster_saved() -> bool:
                url = owner_url(proc_settings)
                if url is None:
                    return False
                try:
                    await asyncio.to_thread(ask_owner, url,
                                            f"/memory/worker-coordination/{roster_key('r1')}")
                except Exception:
                    return False
                return True

            await wait_until(roster_saved, what="roster in state memory")
        crashed.kill()  # the supervisor dies; its workers live on, orphaned
        await crashed.wait()
        assert all(pid_alive(pid) for pid in old.values())

        emitter = MemoryEmitter(svc.dispatch)
        restarted_svc = JobService(svc.pool, svc.dispatch, svc.settings, memory=emitter)
        async with supervising(restarted_svc, workers=2, name="r1") as sup:
            assert sup.roster_source == ("memory" if with_owner else "postgres")
            assert sorted(s.worker_id for s in sup.slots.values()) == ["r1-000-g1", "r1-001-g1"]

            async def retired() -> bool:
                return sup.stats["workers_retired"] == 2

            await wait_until(retired, what="the orphans retired")
            assert not any(pid_alive(pid) for pid in old.values())
            rows = await svc.pool.fetch("SELECT status, failure_reason FROM workers"
                                        " WHERE id = ANY($1)", list(old))
            assert {(r["status"], r["failure_reason"]) for r in rows} == {
                ("FAILED", "supervisor restarted")}
            job = await restarted_svc.create(JobSpec(job_type="noop"))
            await wait_until(lambda: _status_is(svc, job.job_id, "COMPLETED"),
                             what="the new generation at work")
        await emitter.close()
    finally:
        for proc in (crashed, owner):
            if proc is not None and proc.returncode is None:
                proc.terminate()
                await proc.wait()


async def _count_is(fetch: Any, n: int) -> bool:
    return len(await fetch()) == n


@pytest.mark.parametrize("spawn", ["forkserver", "exec"])
async def test_workers_run_at_the_niceness_asked(svc: JobService, spawn: str) -> None:
    import psutil

    base = psutil.Process().nice()
    async with supervising(svc, workers=1, worker_nice=7, spawn=spawn) as sup:
        (slot,) = sup.slots.values()
        assert psutil.Process(slot.proc.pid).nice() == min(19, base + 7)
        job = await svc.create(JobSpec(job_type="noop"))
        await wait_until(lambda: job_done(svc, job.job_id), what="the job run")
    with pytest.raises(ValueError, match="worker_nice must be between 0 and 19, got 20"):
        SupervisorOptions(workers=1, worker_nice=20)


async def job_done(svc: JobService, job_id: str) -> bool:
    return (await job_row(svc, job_id))["status"] == JobStatus.COMPLETED


async def test_a_supervisor_restarted_under_its_name_keeps_its_new_workers(
        svc: JobService) -> None:
    """After a clean stop the workers' rows stay STOPPED with an old heartbeat; a supervisor
    started again under the same name reuses the ids, and its new workers are not taken for
    dead before they register (the old rows' heartbeat age is not theirs)."""
    async with supervising(svc, workers=2, name="again") as first:
        ids = sorted(s.worker_id for s in first.slots.values())

    async def old_enough() -> bool:  # the stopped rows' heartbeats are past the TTL
        ages = await svc.pool.fetch(
            "SELECT extract(epoch FROM clock_timestamp() - last_heartbeat_at) AS age "
            "FROM workers WHERE id = ANY($1)", ids)
        return len(ages) == 2 and all(r["age"] > 2 * svc.settings.heartbeat_ttl_s
                                      for r in ages)

    await wait_until(old_enough, what="the stopped workers' heartbeats to age")
    async with supervising(svc, workers=2, name="again") as second:
        assert sorted(s.worker_id for s in second.slots.values()) == ids  # the same ids
        assert second.stats["heartbeat_timeouts"] == 0, (second.stats, second.events)
        assert second.stats["replacements"] == 0
