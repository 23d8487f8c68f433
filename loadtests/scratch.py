"""Throwaway schemas: a PostgreSQL schema and Redis key prefix of their own, migrated fresh,
for a benchmark, the demo or a run, so that what they measure and check concerns them alone.
Dropped again afterwards unless asked to keep them (a run keeps its data for inspection)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace

from core.service.runtime import create_dispatch
from core.settings import Settings
from core.store import migrate
from core.store.pools import connect_admin


@contextlib.asynccontextmanager
async def scratch_schema(settings: Settings, tag: str, *, keep: bool = False
                         ) -> AsyncIterator[Settings]:
    """Settings whose schema and prefix are `tag`, created empty (anything left under that
    name before is dropped first) and migrated; dropped on exit unless `keep`."""
    scratch = replace(settings, schema=tag, prefix=tag)
    await _reset(scratch, create=True)
    try:
        yield scratch
    finally:
        if not keep:
            await _reset(scratch, create=False)


async def _reset(settings: Settings, *, create: bool) -> None:
    dispatch = create_dispatch(settings, max_connections=1)
    try:
        await dispatch.flush_prefix()
    finally:
        await dispatch.close()
    conn = await connect_admin(settings)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{settings.schema}" CASCADE')
        if create:
            await migrate.migrate(conn, settings.schema)
    finally:
        await conn.close()
