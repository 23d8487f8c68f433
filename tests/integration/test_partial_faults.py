"""Faults that hit some processes only: a worker group cut from Redis or from PostgreSQL through
proxies of its own while the other group and the supervisor keep both stores, and a worker
group whose clock runs an hour ahead or behind. Real worker processes, real proxies, real
stores."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from datetime import datetime
from urllib.parse import urlsplit, urlunsplit

from chaos.proxy_api import ProxyCollection
from core.jobs.model import JobSpec
from core.service.jobs import JobService
from core.settings import Settings
from core.supervisor.groups import WorkerGroup
from core.supervisor.supervisor import Supervisor
from core.worker.clock import SKEW_ENV
from tests.conftest import wait_until
from tests.integration.test_processes import proc_settings, supervising, svc  # noqa: F401


def _through(url: str, listen: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(
        f"{parts.hostname}:{parts.port}", listen)))


@contextlib.asynccontextmanager
async def group_proxies(settings: Settings, groups: list[str]
                        ) -> AsyncIterator[tuple[ProxyCollection, list[WorkerGroup]]]:
    """A proxy per (group, store), and the worker groups that reach the stores through them."""
    proxies = ProxyCollection()
    urls = {"postgres": settings.pg_dsn or "", "redis": settings.redis_url or ""}
    out = []
    for group in groups:
        env = {}
        for store, url in urls.items():
            u = urlsplit(url)
            p = await proxies.create({"name": f"{store}-{group}",
                                      "upstream": f"{u.hostname}:{u.port}"})
            key = "JOBHARNESS_PG_DSN" if store == "postgres" else "JOBHARNESS_REDIS_URL"
            env[key] = _through(url, p.listen)
        out.append(WorkerGroup(group, env))
    try:
        yield proxies, out
    finally:
        for name in list(proxies.proxies):
            await proxies.delete(name)


async def _all_completed_once(js: JobService, ids: list[str]) -> bool:
    rows = await js.pool.fetch(
        "SELECT j.status, (SELECT count(*) FROM job_executions e WHERE e.job_id = j.id"
        " AND e.status = 'COMPLETED') AS done FROM jobs j WHERE j.id = ANY($1::uuid[])", ids)
    return len(rows) == len(ids) and all(r["status"] == "COMPLETED" for r in rows)


async def _completions_by(js: JobService, ids: list[str]) -> dict[str, int]:
    rows = await js.pool.fetch(
        "SELECT worker_id, count(*) AS n FROM job_executions WHERE job_id = ANY($1::uuid[])"
        " AND status = 'COMPLETED' GROUP BY worker_id", ids)
    return {r["worker_id"]: r["n"] for r in rows}


async def _doubly_completed(js: JobService) -> int:
    return int(await js.pool.fetchval(
        "SELECT count(*) FROM (SELECT job_id FROM job_executions WHERE status = 'COMPLETED'"
        " GROUP BY job_id HAVING count(*) > 1) d"))


async def _create(js: JobService, n: int, ms: int) -> list[str]:
    return [(await js.create(JobSpec(job_type="sleep", payload={"ms": ms}))).job_id
            for _ in range(n)]


def _worker_of(sup: Supervisor, group: str) -> str:
    return next(s.worker_id for s in sup.slots.values() if s.group == group)


async def test_a_worker_group_cut_from_one_store_keeps_working_and_nobody_is_replaced(
        svc: JobService) -> None:  # noqa: F811
    async with group_proxies(svc.settings, ["workers-a", "workers-b"]) as (proxies, groups), \
            supervising(svc, workers=2, groups=tuple(groups)) as sup:
        a, b = _worker_of(sup, "workers-a"), _worker_of(sup, "workers-b")
        assert [w["group"] for w in sup.describe()] == ["workers-a", "workers-b"]

        # workers-a loses Redis; workers-b and the supervisor keep it
        await proxies.update("redis-workers-a", {"enabled": False})
        key = svc.dispatch.keys.heartbeat(a)

        async def a_gone_from_redis() -> bool:
            return not await svc.dispatch._client.exists(key)

        await wait_until(a_gone_from_redis, what="workers-a's Redis heartbeat to lapse (the cut)")
        ids = await _create(svc, 16, 250)
        await wait_until(lambda: _all_completed_once(svc, ids), timeout_s=40,
                         what="every job done while workers-a has no Redis")
        by = await _completions_by(svc, ids)
        assert by.get(a, 0) >= 1, f"the cut group did no work through PostgreSQL: {by}"
        assert by.get(b, 0) >= 1, by
        assert sup.stats["replacements"] == 0, sup.events
        await proxies.update("redis-workers-a", {"enabled": True})

        # workers-b loses PostgreSQL: its Redis heartbeat keeps it alive; what it took from
        # Redis and cannot lease or finish is recovered, and done once, by the others
        await proxies.update("postgres-workers-b", {"enabled": False})
        ids = await _create(svc, 16, 150)
        await wait_until(lambda: _all_completed_once(svc, ids), timeout_s=40,
                         what="every job done while workers-b has no PostgreSQL")

        async def b_stale_in_postgres() -> bool:
            return bool(await svc.pool.fetchval(
                "SELECT last_heartbeat_at < clock_timestamp() - make_interval(secs => $2)"
                " FROM workers WHERE id = $1", b, 2 * svc.settings.heartbeat_ttl_s))

        await wait_until(b_stale_in_postgres, what="workers-b's PostgreSQL heartbeat to age")
        by = await _completions_by(svc, ids)
        assert by.get(a, 0) >= 1, by
        assert by.get(b, 0) == 0, by
        assert sup.stats["replacements"] == 0, sup.events
        assert sup.stats["heartbeat_timeouts"] == 0
        beat = await svc.pool.fetchval("SELECT last_heartbeat_at FROM workers WHERE id = $1", b)
        await proxies.update("postgres-workers-b", {"enabled": True})

        async def b_beats_again() -> bool:
            now = await svc.pool.fetchval("SELECT last_heartbeat_at FROM workers WHERE id = $1",
                                          b)
            return bool(now > beat)

        await wait_until(b_beats_again, what="workers-b's PostgreSQL heartbeat after the heal")
        ids = await _create(svc, 12, 250)
        await wait_until(lambda: _all_completed_once(svc, ids), timeout_s=40,
                         what="jobs after both heals")
        assert (await _completions_by(svc, ids)).get(b, 0) >= 1
        assert await _doubly_completed(svc) == 0
        assert sup.stats["replacements"] == 0, sup.events


async def test_workers_with_skewed_clocks_stamp_nothing_with_their_own_time(
        svc: JobService) -> None:  # noqa: F811
    groups = (WorkerGroup("ahead", {SKEW_ENV: "3600"}),
              WorkerGroup("behind", {SKEW_ENV: "-3600"}))
    before: datetime = await svc.pool.fetchval("SELECT clock_timestamp()")
    async with supervising(svc, workers=2, groups=groups) as sup:
        ahead, behind = _worker_of(sup, "ahead"), _worker_of(sup, "behind")
        meta = {r["id"]: json.loads(r["metadata"]) if isinstance(r["metadata"], str)
                else r["metadata"] for r in await svc.pool.fetch(
                    "SELECT id, metadata FROM workers WHERE id = ANY($1)", [ahead, behind])}
        assert meta[ahead]["clock_skew_s"] == 3600
        assert meta[behind]["clock_skew_s"] == -3600
        ids = await _create(svc, 12, 200)
        await wait_until(lambda: _all_completed_once(svc, ids), timeout_s=40,
                         what="jobs done by skewed workers")
        by = await _completions_by(svc, ids)
        assert by.get(ahead, 0) >= 1, by
        assert by.get(behind, 0) >= 1, by

        async def both_sampled() -> bool:
            n = await svc.pool.fetchval(
                "SELECT count(DISTINCT worker_id) FROM worker_health_samples"
                " WHERE worker_id = ANY($1)", [ahead, behind])
            return bool(n == 2)

        await wait_until(both_sampled, what="health samples of both skewed workers")
    after: datetime = await svc.pool.fetchval("SELECT clock_timestamp()")
    jobs = await svc.pool.fetch("SELECT started_at, completed_at FROM jobs"
                                " WHERE id = ANY($1::uuid[])", ids)
    execs = await svc.pool.fetch("SELECT started_at, finished_at FROM job_executions"
                                 " WHERE job_id = ANY($1::uuid[])", ids)
    stamps = [t for r in jobs for t in (r["started_at"], r["completed_at"])] + \
        [t for r in execs for t in (r["started_at"], r["finished_at"])]
    assert stamps
    assert all(before <= t <= after for t in stamps), \
        "a lifecycle timestamp came from a worker's clock"
    samples = await svc.pool.fetch("SELECT sampled_at FROM worker_health_samples"
                                   " WHERE worker_id = ANY($1)", [ahead, behind])
    assert samples
    assert all(before <= r["sampled_at"] <= after for r in samples)
    assert await _doubly_completed(svc) == 0



async def test_a_worker_started_while_postgres_is_away_waits_for_it(
        svc: JobService) -> None:  # noqa: F811
    """Not exited and restarted once a second for as long as the outage lasts (a crash loop):
    the same process registers once PostgreSQL answers."""
    from core.supervisor.supervisor import SupervisorOptions
    from tests.integration.test_processes import all_registered

    async with group_proxies(svc.settings, ["late"]) as (proxies, groups):
        await proxies.update("postgres-late", {"enabled": False})
        opts = SupervisorOptions(workers=1, groups=tuple(groups), check_interval_s=0.2,
                                 reconcile_interval_s=0.5, drain_timeout_s=2.0)
        sup = Supervisor(svc, svc.settings, opts)
        stop = asyncio.Event()
        await sup.start()
        runner = asyncio.create_task(sup.run(stop))
        try:
            wid = sup.slots[0].worker_id
            log = sup.log_dir / f"{wid}.log"

            async def waiting() -> bool:
                return log.exists() and "waiting for it" in log.read_text()

            await wait_until(waiting, what="the worker to say it waits for PostgreSQL")
            await proxies.update("postgres-late", {"enabled": True})
            await wait_until(lambda: all_registered(svc, sup), what="the worker registered")
            assert sup.slots[0].worker_id == wid  # the same process, never restarted
            assert sup.stats["process_deaths"] == 0
            ids = await _create(svc, 3, 50)
            await wait_until(lambda: _all_completed_once(svc, ids), what="its jobs done")
        finally:
            stop.set()
            await runner
