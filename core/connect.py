"""Endpoints and connections: resolve the configured servers (starting the embedded ones only
when none are configured) and open asyncpg pools pointed at the configured schema."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace

import asyncpg

from core.dispatch import RedisDispatch
from core.embedded import EmbeddedServices
from core.errors import StoreUnavailable
from core.keys import Keys
from core.settings import Settings


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
        ),
        started,
    )


async def _init_connection(conn: asyncpg.Connection) -> None:
    for typ in ("jsonb", "json"):
        await conn.set_type_codec(
            typ, encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
        )


async def _reset(conn: asyncpg.Connection) -> None:
    """Run when a connection goes back to the pool. The core never leaves session state on a
    pooled connection (no LISTEN, session-level locks, SET or open cursors), so asyncpg's
    default reset query, one more round trip per borrowed connection, is skipped; a
    transaction somehow left open is rolled back."""
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


async def create_pool(
    settings: Settings, *, min_size: int = 1, max_size: int = 2, schema: str | None = None,
    observe: Callable[[float], None] | None = None,
) -> asyncpg.Pool:
    """A pool whose connections resolve unqualified names in the configured schema;
    `observe` is called with each query's duration in seconds (metrics)."""

    async def init(conn: asyncpg.Connection) -> None:
        await _init_connection(conn)
        if observe is not None:
            conn.add_query_logger(lambda record: observe(record.elapsed))

    if not settings.pg_dsn:
        raise StoreUnavailable("no PostgreSQL DSN configured (resolve_endpoints first)")
    try:
        pool = await asyncpg.create_pool(
            settings.pg_dsn,
            min_size=min_size,
            max_size=max_size,
            init=init,
            reset=_reset,
            command_timeout=60,
            server_settings={
                "search_path": schema or settings.schema,
                "application_name": "jobharness",
            },
        )
    except (OSError, asyncpg.PostgresError) as exc:
        raise StoreUnavailable(f"cannot connect to PostgreSQL: {exc}") from exc
    assert pool is not None
    return pool


async def connect_admin(settings: Settings) -> asyncpg.Connection:
    """One plain connection (migrations, verify)."""
    if not settings.pg_dsn:
        raise StoreUnavailable("no PostgreSQL DSN configured (resolve_endpoints first)")
    try:
        return await asyncpg.connect(settings.pg_dsn)
    except (OSError, asyncpg.PostgresError) as exc:
        raise StoreUnavailable(f"cannot connect to PostgreSQL: {exc}") from exc


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
