"""A worker's heartbeat keeps its Redis key fresh while its PostgreSQL half hangs (invariant 5:
a store outage is not a worker outage). The hang is real: another transaction holds the
worker's row, so the heartbeat's UPDATE waits on the lock."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

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
