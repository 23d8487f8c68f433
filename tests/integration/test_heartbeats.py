"""A worker's heartbeat keeps its Redis key fresh while its PostgreSQL half hangs, and its
PostgreSQL row fresh while its Redis half hangs (invariant 5: a store outage is not a worker
outage). The hangs are real: another transaction holds the worker's row, so the heartbeat's
UPDATE waits on the lock; a stopped Redis (SIGSTOP) answers nothing until the timeout."""

from __future__ import annotations

import asyncio
import signal
import time
from dataclasses import replace
from pathlib import Path

from core.service.jobs import JobService
from core.worker.handlers import BUILTIN_HANDLERS
from core.worker.loop import Worker
from core.worker.process import heartbeats
from tests.conftest import wait_until


async def test_a_hanging_postgres_heartbeat_does_not_let_the_redis_key_expire(
        service: JobService) -> None:
    settings = replace(service.settings, heartbeat_interval_s=0.2, heartbeat_ttl_s=1.0)
    svc = JobService(service.pool, service.dispatch, settings)
    await svc.register_worker("beating", (), concurrency=1, hostname="h", pid=1)
    worker = Worker(svc, "beating", BUILTIN_HANDLERS)
    key = svc.dispatch.keys.heartbeat("beating")
    stop = asyncio.Event()
    async with svc.pool.acquire() as conn:
        lock = conn.transaction()
        await lock.start()
        await conn.execute("SELECT 1 FROM workers WHERE id = 'beating' FOR UPDATE")
        before = await conn.fetchval("SELECT last_heartbeat_at FROM workers WHERE id = 'beating'")
        beating = asyncio.create_task(heartbeats(svc, worker, stop))
        try:
            # for 2.5 TTLs the PostgreSQL half is stuck on the lock; the key must never lapse
            deadline = time.monotonic() + 2.5 * settings.heartbeat_ttl_s
            seen = 0
            while time.monotonic() < deadline:
                assert await svc.dispatch._client.exists(key), "the Redis heartbeat lapsed"
                seen += 1
                await asyncio.sleep(0.1)  # the sampling period of this check
            await lock.rollback()
            assert seen >= 20

            async def beat_landed() -> bool:
                now = await svc.pool.fetchval("SELECT last_heartbeat_at FROM workers"
                                              " WHERE id = 'beating'")
                return bool(now > before)

            await wait_until(beat_landed, what="the PostgreSQL heartbeat once the lock is gone")
        finally:
            stop.set()
            await beating


async def test_a_hanging_redis_heartbeat_does_not_hold_back_the_postgres_one(
        service: JobService, tmp_path: Path) -> None:
    """The converse: Redis stopped (SIGSTOP, so every call hangs until its timeout, longer
    than the TTL) while PostgreSQL keeps getting a beat every interval."""
    from core.infra.embedded import free_port, valkey_bin
    from core.service.runtime import create_dispatch

    port = free_port()
    server = await asyncio.create_subprocess_exec(
        str(valkey_bin()), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
        "--appendonly", "no", "--dir", str(tmp_path), stdout=asyncio.subprocess.DEVNULL)
    settings = replace(service.settings, heartbeat_interval_s=0.2, heartbeat_ttl_s=1.0,
                       redis_url=f"redis://127.0.0.1:{port}/0", redis_timeout_s=3.0)
    svc = JobService(service.pool, create_dispatch(settings, max_connections=1), settings)
    stop = asyncio.Event()
    try:
        await wait_until(svc.dispatch.ping, what="private Redis up")
        await svc.register_worker("beating", (), concurrency=1, hostname="h", pid=1)
        worker = Worker(svc, "beating", BUILTIN_HANDLERS)
        server.send_signal(signal.SIGSTOP)  # every Redis call now hangs for redis_timeout_s
        beating = asyncio.create_task(heartbeats(svc, worker, stop))
        deadline = time.monotonic() + 2.5 * settings.heartbeat_ttl_s
        ages = []
        while time.monotonic() < deadline:
            ages.append(await svc.pool.fetchval(
                "SELECT extract(epoch FROM clock_timestamp() - last_heartbeat_at)"
                " FROM workers WHERE id = 'beating'"))
            await asyncio.sleep(0.1)  # the sampling period of this check
        assert len(ages) >= 20
        assert max(ages) < settings.heartbeat_ttl_s, "the PostgreSQL heartbeat lapsed"
        stop.set()
        await beating
    finally:
        stop.set()
        server.send_signal(signal.SIGCONT)
        server.kill()
        await server.wait()
        await svc.dispatch.close()
