"""A ready-to-use job system for one command: endpoints resolved (embedded servers started if
none are configured, and stopped again if this command started them), pool and dispatch open."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass

import asyncpg

from core import migrate
from core.connect import (
    connect_admin,
    create_dispatch,
    create_pool,
    embedded_services,
    resolve_endpoints,
)
from core.dispatch import RedisDispatch
from core.memory_events import MemoryEmitter
from core.service import JobService
from core.settings import Settings


@dataclass
class Runtime:
    settings: Settings
    pool: asyncpg.Pool
    dispatch: RedisDispatch
    service: JobService
    memory: MemoryEmitter | None = None


@contextlib.contextmanager
def endpoints(settings: Settings, *, keep_running: bool = False) -> Iterator[Settings]:
    """Settings with endpoints; embedded servers this call started are stopped on exit."""
    resolved, started = resolve_endpoints(settings)
    try:
        yield resolved
    finally:
        to_stop = {name for name, now in started.items() if now}
        if to_stop and not keep_running:
            embedded_services(settings).down(to_stop)


@contextlib.asynccontextmanager
async def open_runtime(
    settings: Settings,
    *,
    pool_size: int = 2,
    redis_connections: int = 2,
    migrate_first: bool = True,
    memory: bool | None = None,
    observe_query: Callable[[float], None] | None = None,
) -> AsyncIterator[Runtime]:
    """Pool + dispatch + service over already-resolved settings (`observe_query`: called
    with every PostgreSQL query's duration)."""
    if migrate_first:
        conn = await connect_admin(settings)
        try:
            await migrate.migrate(conn, settings.schema)
        finally:
            await conn.close()
    pool = await create_pool(settings, min_size=1, max_size=pool_size, observe=observe_query)
    dispatch = create_dispatch(settings, max_connections=redis_connections)
    emitter = None
    if settings.memory if memory is None else memory:
        emitter = MemoryEmitter(dispatch, settings.memory_ttls)
    try:
        yield Runtime(settings, pool, dispatch,
                      JobService(pool, dispatch, settings, memory=emitter), emitter)
    finally:
        if emitter is not None:
            await emitter.close()
        await dispatch.close()
        await pool.close()
