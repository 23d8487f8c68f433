"""PostgreSQL restarted under load: a real `jobharness supervisor` process with real worker
processes, jobs created all along, and the server stopped four ways (SIGKILL of every
PostgreSQL process, `-m immediate`, `-m fast`, and killed again while it is still starting
up), each time started again. Afterwards every accepted job ends exactly once and the
supervisor is the same process, still running its workers.

The test runs its own PostgreSQL (in its temporary folder), so stopping it disturbs no other
test; Redis is the session's, under the test's own key prefix."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import asyncpg
import pytest

from chaos.checker import check_all
from core.errors import StoreUnavailable
from core.infra.embedded import EmbeddedServices, pid_alive
from core.jobs.model import JobSpec
from core.service.jobs import JobService
from core.service.runtime import create_dispatch
from core.settings import Settings, to_env
from core.store import migrate
from core.store.pools import create_pool
from tests.conftest import wait_until

pytestmark = pytest.mark.timeout(300)

WORKERS = 4
TERMINAL = ("COMPLETED", "DEAD", "CANCELLED")


@pytest.fixture
def own_postgres(tmp_path: Path) -> Iterator[EmbeddedServices]:
    services = EmbeddedServices(tmp_path / "services", pg_max_connections=100)
    services.start_postgres()
    try:
        yield services
    finally:
        services.down({"postgres"})


@pytest.fixture
async def restart_settings(server_settings: Settings, own_postgres: EmbeddedServices,
                           tmp_path: Path) -> Settings:
    dsn = own_postgres.pg_url()
    assert dsn is not None
    settings = replace(server_settings, pg_dsn=dsn, prefix=f"t{uuid.uuid4().hex[:10]}",
                       data_dir=tmp_path / "state", heartbeat_interval_s=1.0,
                       heartbeat_ttl_s=4.0, lease_s=4.0)
    conn = await asyncpg.connect(dsn)
    try:
        await migrate.migrate(conn, settings.schema)
    finally:
        await conn.close()
    return settings


@contextlib.contextmanager
def supervisor_process(settings: Settings, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    env = {**os.environ, **to_env(settings)}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "core.cli", "supervisor", "--workers", str(WORKERS),
             "--concurrency", "4", "--name", "rs", "--drain-timeout-s", "2"],
            stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class Producer:
    """Creates small batches of short jobs until stopped; a job counts as accepted only when
    its create returned (a create refused with StoreUnavailable was never accepted)."""

    def __init__(self, service: JobService) -> None:
        self.service = service
        self.accepted: set[str] = set()
        self.refused = 0

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            specs = [JobSpec(job_type="sleep", payload={"ms": 30}) for _ in range(10)]
            try:
                results = await self.service.create_batch(specs)
            except StoreUnavailable:
                self.refused += 1
            else:
                self.accepted.update(r.job_id for r in results)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.1)  # the arrival rate: ~100 jobs/s


async def finished(pool: asyncpg.Pool) -> int:
    try:
        return int(await pool.fetchval(
            "SELECT count(*) FROM jobs WHERE status = ANY($1::text[])", list(TERMINAL)))
    except StoreUnavailable:
        return -1


async def active_workers(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    return list(await pool.fetch("SELECT id, pid FROM workers WHERE status = 'ACTIVE'"))


async def restart(services: EmbeddedServices, how: str) -> None:
    """Stop PostgreSQL `how` and start it again (in a thread: pg_ctl blocks)."""
    if how == "during-recovery":
        # killed again while the restarted server is still starting up (crash recovery)
        await asyncio.to_thread(services.stop_postgres, "kill")
        await asyncio.to_thread(services.start_postgres, wait=False)
        await asyncio.to_thread(services.stop_postgres, "kill")
    else:
        await asyncio.to_thread(services.stop_postgres, how)
    await asyncio.sleep(1.0)  # the outage: clients see refused connections meanwhile
    await asyncio.to_thread(services.start_postgres)


async def test_postgres_restarts_under_load_lose_nothing_and_stop_nothing(
        restart_settings: Settings, own_postgres: EmbeddedServices, tmp_path: Path) -> None:
    settings = restart_settings
    pool = await create_pool(settings, max_size=4)
    dispatch = create_dispatch(settings, max_connections=4)
    service = JobService(pool, dispatch, settings)
    producer = Producer(service)
    stop = asyncio.Event()
    log = tmp_path / "supervisor.log"
    try:
        with supervisor_process(settings, log) as sup:
            async def all_active() -> bool:
                assert sup.poll() is None, log.read_text()
                return len(await active_workers(pool)) == WORKERS

            await wait_until(all_active, timeout_s=60, what="workers registered")
            first = {r["id"]: r["pid"] for r in await active_workers(pool)}
            making = asyncio.create_task(producer.run(stop))
            for how in ("kill", "immediate", "fast", "during-recovery"):
                before = await finished(pool)
                await wait_until(lambda b=before: _more_finished(pool, b), timeout_s=60,
                                 what=f"jobs finishing before the {how} restart")
                await restart(own_postgres, how)
                after, made = await finished(pool), len(producer.accepted)
                await wait_until(lambda a=after: _more_finished(pool, a), timeout_s=60,
                                 what=f"jobs finishing again after the {how} restart")
                await wait_until(lambda m=made: _accepted_more(producer, m + 50), timeout_s=60,
                                 what=f"jobs accepted again after the {how} restart")
                assert sup.poll() is None, f"the supervisor exited after {how}:\n" + \
                    log.read_text()[-3000:]
            stop.set()
            await making

            async def all_ended() -> bool:
                n = int(await pool.fetchval(
                    "SELECT count(*) FROM jobs WHERE id = ANY($1::uuid[])"
                    " AND status = ANY($2::text[])", sorted(producer.accepted), list(TERMINAL)))
                return n == len(producer.accepted)

            # bounded: a lease (4 s) to expire, a reconciler pass (2 s), and the backlog
            await wait_until(all_ended, timeout_s=90, what="every accepted job ended")
            assert sup.poll() is None
            # a worker whose PostgreSQL heartbeat lagged through an outage may be marked
            # STALE by the reconciler; its next heartbeat makes it ACTIVE again
            await wait_until(all_active, timeout_s=30, what="every worker ACTIVE again")
            workers = {r["id"]: r["pid"] for r in await active_workers(pool)}
            assert all(pid_alive(pid) for pid in workers.values())

            async def converged() -> bool:  # invariant 2: the index agrees within a bound
                async with pool.acquire() as conn:
                    return all(c.ok for c in await check_all(conn, dispatch.client,
                                                             settings.prefix))

            # while the supervisor (and its reconciler) still runs: a Redis lease (4 s) of a
            # job popped while PostgreSQL was away, then a reconciler pass
            try:
                await wait_until(converged, timeout_s=30, what="the dispatch index to converge")
            except AssertionError:
                async with pool.acquire() as conn:
                    failing = [c.as_dict() for c in await check_all(
                        conn, dispatch.client, settings.prefix) if not c.ok]
                raise AssertionError(f"not converged after 30 s: {failing}") from None
        assert sup.returncode == 0, log.read_text()[-3000:]
        text = log.read_text()
        # the same processes, or ones the supervisor replaced them with (and said so)
        result = json.loads(text[text.index("{\n"):])
        replaced = {r["old"]: r["new"] for r in result["replacements"]}
        assert set(first) - set(workers) <= set(replaced), (first, workers, replaced)
        assert set(workers) - set(first) <= set(replaced.values())
        assert all(workers[w] == pid for w, pid in first.items() if w in workers)
        assert "Traceback" not in text, text[-3000:]
        # one line when an outage starts and one when it ends, never one per attempt: at most
        # five outages (one per restart, two for the one killed again while starting up, which
        # may briefly answer between its kills); a process that did not call PostgreSQL while
        # it was down, such as a supervisor checking every second, sees fewer, and the last may
        # end after it stopped
        for log_text in [text, *(w.read_text() for w in (settings.data_dir / "logs").glob(
                "rs-*.log"))]:
            assert "Traceback" not in log_text, log_text[-3000:]
            went = log_text.count("PostgreSQL unavailable")
            back = log_text.count("PostgreSQL available again")
            assert went <= 5, log_text[-3000:]
            assert went - 1 <= back <= went, log_text[-3000:]
        assert text.count("PostgreSQL unavailable") >= 1, text[-3000:]

        stored = {str(r["id"]) for r in await pool.fetch(
            "SELECT id FROM jobs WHERE id = ANY($1::uuid[])", sorted(producer.accepted))}
        assert stored == producer.accepted  # 0 lost
        assert producer.refused > 0  # the load went on through the outages
        async with pool.acquire() as conn:
            checks = await check_all(conn, dispatch.client, settings.prefix)
        by_name = {c.name: c for c in checks}
        assert by_name["completed_twice"].violations == 0
        assert by_name["orphan_redis_entries"].violations == 0
        assert all(c.ok for c in checks), [c for c in checks if not c.ok]
        assert service.stats["store_outages"] >= 4
        # counted cluster-wide too (the API's /metrics: jobharness_cluster_events)
        assert (await dispatch.event_counts()).get("store_outages", 0) >= 4
    finally:
        stop.set()
        await dispatch.flush_prefix()
        await dispatch.close()
        await pool.close()


async def _accepted_more(producer: Producer, than: int) -> bool:
    return len(producer.accepted) > than


async def _more_finished(pool: asyncpg.Pool, than: int) -> bool:
    return await finished(pool) > max(than, 0)


def test_restart_store_drill_under_jobharness_run(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """`jobharness run --drill` with PostgreSQL restarted (immediate stop) and Redis killed
    and started empty, on embedded servers of the test's own (a data folder of its own)."""
    import csv
    import json

    from loadtests.cli import main

    drill = tmp_path / "restarts.yaml"
    drill.write_text(
        "name: restarts\n"
        "settings: {heartbeat_interval_s: 1, heartbeat_ttl_s: 4, lease_s: 4,"
        " redis_timeout_s: 0.5}\n"
        "steady_state:\n  - {probe: api_healthy}\n"
        "  - {probe: workers_active_at_least, fraction: 1.0}\n"
        "method:\n"
        "  - {action: restart-store, at_s: 4, target: postgres, mode: immediate, down_s: 1}\n"
        "  - {action: restart_store, at_s: 12, target: redis, down_s: 1}\n"
        "expect_no_replacement_during: [postgres, redis]\n"
        "slo: {error_rate_max: 0.5, create_p99_ms: 10000}\nsettle_s: 60\n")
    out = tmp_path / "runs"
    code = main(["run", "drill", "--drill", str(drill), "--jobs", "500", "--out", str(out),
                 "--json", "--data-dir", str(tmp_path / "data")])
    verdict = json.loads(capsys.readouterr().out)
    assert code == 0, verdict["breaches"]
    faults = verdict["drill"]["faults"]
    assert [(f["name"], f["args"]["target"]) for f in faults] == [
        ("restart_store", "postgres"), ("restart_store", "redis")]
    assert all(f["recovery_s"] is not None and f["end_s"] > f["start_s"] for f in faults)
    journal = [j for j in verdict["drill"]["journal"] if j["kind"] == "fault"]
    assert [j["result"]["mode"] for j in journal] == ["immediate", "kill"]
    (folder,) = out.iterdir()
    with open(folder / "samples.csv", newline="") as fh:
        samples = list(csv.DictReader(fh))
    assert {"0", "1"} <= {s["pg_up"] for s in samples}  # the sampler saw PostgreSQL go
    assert {"0", "1"} <= {s["redis_up"] for s in samples}
    checks = {c["name"]: c for c in verdict["invariants"]}
    assert checks["completed_twice"]["violations"] == 0
    assert checks["accepted_jobs_missing"]["violations"] == 0
    assert checks["no_replacement_storm"]["ok"]
    summary = (folder / "report" / "summary.md").read_text()
    assert "| restart_store | postgres (immediate) |" in summary
    assert "| restart_store | redis |" in summary
