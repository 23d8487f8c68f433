"""Named SQL queries loaded once from `core/store/sql/queries.sql`."""

from __future__ import annotations

import functools
import importlib.resources
import re
from types import TracebackType
from typing import TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from core.errors import StoreUnavailable

# A connection of our own or one borrowed from a pool.
Conn: TypeAlias = "asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]"

_NAME_RE = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


@functools.cache
def queries() -> dict[str, str]:
    text = importlib.resources.files("core.store").joinpath("sql/queries.sql").read_text()
    parts = _NAME_RE.split(text)
    out: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in out:
            raise ValueError(f"query {name!r} defined twice")
        out[name] = body.strip().rstrip(";")
    return out


# Driver errors that mean "the server is not available right now", as opposed to "this
# statement is wrong": the connection failed or was closed (OSError, TimeoutError,
# InterfaceError, SQLSTATE class 08), the server is starting up, shutting down or recovering
# from a crash (class 57: 57P01 admin shutdown, 57P02 crash shutdown, 57P03 cannot connect
# now, ...), or it has no connection slot left (53300). asyncpg's InternalClientError (a
# protocol left in a state it cannot go on from, seen when a server dies mid-statement) belongs
# here too: that connection is dropped and the call can be tried again on a fresh one.
UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,  # TimeoutError included
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.InternalClientError,
)


def store_unavailable(exc: BaseException) -> bool:
    """Whether a PostgreSQL driver error means the server is unavailable right now."""
    return isinstance(exc, UNAVAILABLE)


def unavailable_error(exc: BaseException) -> StoreUnavailable:
    """The StoreUnavailable that stands for a driver error (raise it `from exc`)."""
    return StoreUnavailable(f"PostgreSQL unavailable: {type(exc).__name__}: {exc}")


class _StoreErrors:
    """The context manager `store_errors` returns: a class, not a generator, as it wraps every
    store call on the hot paths (a generator-based one cost a worker ~4 % of its CPU)."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, typ: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc is not None and isinstance(exc, UNAVAILABLE):
            raise unavailable_error(exc) from exc


_STORE_ERRORS = _StoreErrors()


def store_errors() -> _StoreErrors:
    """Translate "server unavailable" driver errors into StoreUnavailable (invariant 4's
    signal). Pools made by `core.store.pools.create_pool` already translate every call; this is
    for plain connections."""
    return _STORE_ERRORS


def q(name: str) -> str:
    """The SQL of the named query."""
    return queries()[name]
