"""PostgreSQL connections: pools pointed at the configured schema that say StoreUnavailable
whenever the server is not available right now, and plain admin connections."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

import asyncpg
from asyncpg.pool import PoolAcquireContext

from core.errors import StoreUnavailable
from core.settings import Settings
from core.store.outage import Outage
from core.store.queries import UNAVAILABLE, unavailable_error

# connecting fails with these: the server is unavailable, or it refused us (auth, database)
CONNECT_ERRORS: tuple[type[BaseException], ...] = (*UNAVAILABLE, asyncpg.PostgresError)


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


if TYPE_CHECKING:
    _AcquireBase = PoolAcquireContext[asyncpg.Record]
else:  # not subscriptable at run time
    _AcquireBase = PoolAcquireContext


class StorePool(asyncpg.Pool):
    """An asyncpg pool whose every use says StoreUnavailable when PostgreSQL is not available
    right now (see `core.store.queries.UNAVAILABLE`): connecting, the statements run on a borrowed
    connection (`async with pool.acquire() as conn: ...`), the pool's own `fetch`/`execute`/...
    (which borrow through `acquire`), and giving the connection back. One place translates,
    so no caller can miss it; `outage` tells when this process saw PostgreSQL go and return."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.outage = Outage("PostgreSQL")
        self.kept = 0  # connections the HeldConnections below keep (or are about to)
        # a loop of single creates (given back after 10 ms unused: an API's creates come in
        # bursts, and the connection serves others between them)
        self.held = HeldConnection(self)
        # a worker's leases and completions: a worker on a loaded machine can take 20 ms
        # between two cycles, and a connection given back after 10 ms was borrowed again
        # every other cycle, which cost more client time than borrowing for each statement
        self.stream = HeldConnection(self, idle_s=1.0)

    def may_keep(self) -> bool:
        """Whether a HeldConnection may keep one more connection: one is always left to
        ordinary borrows (a worker's pool has two: its heartbeats must never wait for a
        stream of creates or leases to pause)."""
        return self.kept < self.get_max_size() - 1

    def acquire(self, *, timeout: float | None = None) -> PoolAcquireContext[asyncpg.Record]:
        return _TranslatingAcquire(self, timeout)

    async def fetch_held(self, query: str, *args: Any) -> list[asyncpg.Record]:
        """`fetch` on the connection kept for a stream of one-statement calls (`stream`: a
        worker's leases and completions), or a pool borrow when it is in use or not kept."""
        async with self.stream.acquire() as conn:
            return list(await conn.fetch(query, *args))

    async def close(self) -> None:
        await self.held.give_back()
        await self.stream.give_back()
        await super().close()


class _TranslatingAcquire(_AcquireBase):
    __slots__ = ()

    async def release_quietly(self) -> None:
        """Give the connection back with no word to the outage state: a kept connection going
        back unused, or found ended by the server, says nothing about whether PostgreSQL is
        there now (reported as "available again", it split one outage into many)."""
        with contextlib.suppress(*UNAVAILABLE, StoreUnavailable, asyncpg.InterfaceError):
            await super().__aexit__(None, None, None)

    def _outage(self) -> Outage:
        pool = self.pool
        assert isinstance(pool, StorePool)
        return pool.outage

    async def __aenter__(self) -> Any:
        try:
            return await super().__aenter__()
        except UNAVAILABLE as exc:
            self._outage().failed(exc)
            raise unavailable_error(exc) from exc

    async def __aexit__(self, *exc: object) -> None:
        exc_val = exc[1] if len(exc) > 1 else None
        con = self.connection
        if con is not None and isinstance(exc_val, (*UNAVAILABLE, StoreUnavailable)):
            # it saw the server go: never lend it out again (asyncpg may have detached it)
            with contextlib.suppress(asyncpg.InterfaceError):
                if not con.is_closed():
                    con.terminate()
        # giving a broken connection back fails: asyncpg has dropped it, and the body's
        # outcome stands
        with contextlib.suppress(*UNAVAILABLE):
            await super().__aexit__(*exc)
        if exc_val is None:
            self._outage().succeeded()
        elif isinstance(exc_val, StoreUnavailable):
            self._outage().failed(exc_val)
        elif isinstance(exc_val, UNAVAILABLE):
            self._outage().failed(exc_val)
            raise unavailable_error(exc_val) from exc_val


class HeldConnection:
    """One pooled connection that a stream of short statements (a loop of single creates, a
    worker's leases and completions) keeps between its calls instead of borrowing one from
    the pool for each: the borrow and the return cost about as much client time as the
    INSERT's own (docs/performance.md). It goes back to the pool once unused for `idle_s`,
    when the pool closes, and at the first error of a statement on it (given back as any
    borrowed connection is: one that saw the server go is never lent out again). A caller
    arriving while it is in use, or when the pool may keep no more (`StorePool.may_keep`),
    borrows from the pool as usual."""

    def __init__(self, pool: StorePool, idle_s: float = 0.01) -> None:
        self._pool = pool
        self.idle_s = idle_s
        self._borrowed: _TranslatingAcquire | None = None  # entered: holds the connection
        self._conn: Any = None
        self._busy = False
        self._reserved = False  # counted in the pool's `kept` (from acquire to give-back)
        self._last_used = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._returning: set[asyncio.Task[None]] = set()  # idle ones on their way back
        self.uses = 0  # calls that ran on it
        self.borrows = 0  # times it was borrowed from the pool

    @property
    def server_pid(self) -> int | None:
        """The held connection's server process, None when none is held or it has ended."""
        conn = self._conn
        return int(conn.get_server_pid()) if _alive(conn) else None

    def acquire(self) -> Any:
        """`async with held.acquire() as conn:` the held connection, or a pool borrow (it is
        in use, or the pool may not keep another connection)."""
        if self._busy or self._pool.is_closing():
            return self._pool.acquire()
        if not self._reserved:  # taken now, before any await: two cannot both pass
            if not self._pool.may_keep():
                return self._pool.acquire()
            self._reserve()
        return _HeldUse(self)

    def _reserve(self) -> None:
        self._reserved = True
        self._pool.kept += 1

    def _unreserve(self) -> None:
        if self._reserved:
            self._reserved = False
            self._pool.kept -= 1

    async def take(self) -> Any:
        self._busy = True
        conn = self._conn
        if conn is not None and not _alive(conn):  # the server ended it while it was held
            self._drop_timer()
            ended = self._detach()
            self._reserve()  # for the one borrowed in its place
            await self._give_back(ended)
            conn = None
        if conn is None:
            borrowed = _TranslatingAcquire(self._pool, None)
            try:
                conn = await borrowed.__aenter__()
            except BaseException:
                self._busy = False
                self._unreserve()
                raise
            self._borrowed, self._conn = borrowed, conn
            self.borrows += 1
        self.uses += 1
        return conn

    async def put(self, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._busy = False
        if exc is None:
            self._pool.outage.succeeded()
            if not self._pool.is_closing():
                self._last_used = asyncio.get_running_loop().time()
                if self._timer is None:
                    self._arm()
                return
        self._drop_timer()  # an error, or the pool is closing (its close waits for this one)
        await self._give_back(self._detach(), exc, tb)

    def _arm(self) -> None:
        loop = asyncio.get_running_loop()
        self._timer = loop.call_at(self._last_used + self.idle_s, self._idle_check)

    def _drop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _idle_check(self) -> None:
        self._timer = None
        if self._conn is None:
            return
        if self._busy or asyncio.get_running_loop().time() - self._last_used < self.idle_s:
            self._arm()
            return
        # detached now, given back in the background: a caller arriving meanwhile borrows
        # anew instead of taking a connection on its way back to the pool
        task = asyncio.get_running_loop().create_task(self._give_back(self._detach()))
        self._returning.add(task)
        task.add_done_callback(self._returning.discard)

    def _detach(self) -> _TranslatingAcquire | None:
        borrowed, self._borrowed, self._conn = self._borrowed, None, None
        self._unreserve()
        return borrowed

    @staticmethod
    async def _give_back(borrowed: _TranslatingAcquire | None, exc: BaseException | None = None,
                         tb: TracebackType | None = None) -> None:
        if borrowed is None:
            return
        if exc is None:
            await borrowed.release_quietly()
        else:
            await borrowed.__aexit__(type(exc), exc, tb)

    async def give_back(self) -> None:
        """Return the connection to the pool now (the pool is closing)."""
        self._drop_timer()
        if not self._busy:
            await self._give_back(self._detach())
        await asyncio.gather(*self._returning, return_exceptions=True)


def _alive(conn: Any) -> bool:
    """Whether a borrowed connection is still open (asyncpg takes a connection that closed
    back into its pool by itself, and its proxy then refuses every call)."""
    if conn is None:
        return False
    try:
        return not conn.is_closed()
    except asyncpg.InterfaceError:
        return False


class _HeldUse:
    __slots__ = ("_held",)

    def __init__(self, held: HeldConnection) -> None:
        self._held = held

    async def __aenter__(self) -> Any:
        return await self._held.take()

    async def __aexit__(self, typ: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self._held.put(exc, tb)


class _DriverOutageFilter(logging.Filter):
    """asyncpg's pool logs a traceback each time it fails to reconnect in the background;
    an outage is logged once by `Outage` instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return exc is None or not isinstance(exc, UNAVAILABLE)


_DRIVER_FILTER = _DriverOutageFilter()


STATEMENT_TIMEOUT_MS = 60_000


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
    driver_log = logging.getLogger("asyncpg.pool")
    if _DRIVER_FILTER not in driver_log.filters:
        driver_log.addFilter(_DRIVER_FILTER)
    pool = StorePool(
        settings.pg_dsn,
        min_size=min_size,
        max_size=max_size,
        max_queries=50000,
        max_inactive_connection_lifetime=300.0,
        init=init,
        reset=_reset,
        loop=None,
        connection_class=asyncpg.Connection,
        record_class=asyncpg.Record,
        command_timeout=60,
        server_settings={
            "search_path": schema or settings.schema,
            "application_name": "jobharness",
            # the server ends any statement of ours that runs this long (the client's
            # command_timeout only stops waiting for it)
            "statement_timeout": str(STATEMENT_TIMEOUT_MS),
        },
    )
    try:
        await pool
    except CONNECT_ERRORS as exc:
        await pool.close()
        raise StoreUnavailable(f"cannot connect to PostgreSQL: {exc}") from exc
    return pool


async def connect_admin(settings: Settings) -> asyncpg.Connection:
    """One plain connection (migrations, verify)."""
    if not settings.pg_dsn:
        raise StoreUnavailable("no PostgreSQL DSN configured (resolve_endpoints first)")
    try:
        return await asyncpg.connect(settings.pg_dsn)
    except CONNECT_ERRORS as exc:
        raise StoreUnavailable(f"cannot connect to PostgreSQL: {exc}") from exc
