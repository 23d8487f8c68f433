"""Named SQL queries loaded once from `core/sql/queries.sql`."""

from __future__ import annotations

import contextlib
import functools
import importlib.resources
import re
from collections.abc import Iterator
from typing import TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from core.errors import StoreUnavailable

# A connection of our own or one borrowed from a pool.
Conn: TypeAlias = "asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]"

_NAME_RE = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


@functools.cache
def queries() -> dict[str, str]:
    text = importlib.resources.files("core").joinpath("sql/queries.sql").read_text()
    parts = _NAME_RE.split(text)
    out: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in out:
            raise ValueError(f"query {name!r} defined twice")
        out[name] = body.strip().rstrip(";")
    return out


@contextlib.contextmanager
def store_errors() -> Iterator[None]:
    """Translate driver connection failures into StoreUnavailable (invariant 4's signal)."""
    try:
        yield
    except (OSError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError) as exc:
        raise StoreUnavailable(f"PostgreSQL unreachable: {exc}") from exc


def q(name: str) -> str:
    """The SQL of the named query."""
    return queries()[name]
