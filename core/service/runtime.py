"""The wiring every process uses: endpoints resolved (the embedded servers started only when
none are configured, and stopped again by whoever started them), the Redis dispatch client,
and a ready job service (pool + dispatch + optional state-memory emitter)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, replace

import asyncpg

from core.contract.keys import Keys
from core.dispatch.index import RedisDispatch
from core.errors import StoreUnavailable
from core.infra.embedded import EmbeddedServices
from core.memory.events import MemoryEmitter
from core.service.jobs import JobService
from core.settings import Settings
from core.store import migrate
from core.store.pools import connect_admin, create_pool


def embedded_services(settings: Settings) -> EmbeddedServices:
    return EmbeddedServices(
        settings.data_dir / "services", pg_max_connections=settings.pg_max_connections
    )


def resolve_endpoints(settings: Settings) -> tuple[Settings, dict[str, bool]]:
    """Fill in missing endpoints from the embedded servers, starting them if needed.

    Returns the completed settings and {service: started_now} for what was started.
    """
    if settings.pg_dsn and settings.redis_url:
        return settings, {}
    services = embedded_services(settings)
    started = services.up()
    return (
        replace(
            settings,
            pg_dsn=settings.pg_dsn or services.pg_url(),
            redis_url=settings.redis_url or services.redis_url(),
            # both stores embedded: a local run, where the synthetic handlers are on
            synthetic_handlers=(not settings.pg_dsn and not settings.redis_url
                                if settings.synthetic_handlers is None
                                else settings.synthetic_handlers),
        ),
        started,
    )


def create_dispatch(
    settings: Settings, *, max_connections: int = 2, blocking_connections: int | None = None
) -> RedisDispatch:
    if not settings.redis_url:
        raise StoreUnavailable("no Redis URL configured (resolve_endpoints first)")
    return RedisDispatch(
        settings.redis_url,
        Keys(settings.prefix),
        timeout_s=settings.redis_timeout_s,
        retry_after_s=settings.redis_retry_after_s,
        max_connections=max_connections,
        blocking_connections=blocking_connections,
    )


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
    blocking_connections: int | None = None,
    migrate_first: bool = True,
    memory: bool | None = None,
    observe_query: Callable[[float], None] | None = None,
) -> AsyncIterator[Runtime]:
    """Pool + dispatch + service over already-resolved settings, the one wiring every process
    uses (`blocking_connections`: Redis connections parked waiting for work, a worker's;
    `observe_query`: called with every PostgreSQL query's duration)."""
    if migrate_first:
        conn = await connect_admin(settings)
        try:
            await migrate.migrate(conn, settings.schema)
        finally:
            await conn.close()
    pool = await create_pool(settings, min_size=1, max_size=pool_size, observe=observe_query)
    dispatch = create_dispatch(settings, max_connections=redis_connections,
                               blocking_connections=blocking_connections)
    emitter = None
    if settings.memory if memory is None else memory:
        emitter = MemoryEmitter(dispatch, settings.memory_ttls)
    service = JobService(pool, dispatch, settings, memory=emitter)
    try:
        yield Runtime(settings, pool, dispatch, service, emitter)
    finally:
        if emitter is not None:
            await emitter.close()
        await dispatch.close()
        await pool.close()
