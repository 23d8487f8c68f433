"""A stream of single creates keeps one pooled connection between its creates (the pool's
borrow and return cost as much client time as the INSERT's own) and gives it back once idle,
when the pool closes, or when the server ended it."""

from __future__ import annotations

import asyncio

import asyncpg

from core.jobs.model import JobSpec
from core.service.jobs import JobService
from core.settings import Settings
from core.store.pools import StorePool, create_pool
from tests.conftest import open_service, wait_until


async def terminate(settings: Settings, pid: int | None) -> None:
    """End a connection's server process, as a restart or an administrator would."""
    assert pid is not None
    admin = await asyncpg.connect(settings.pg_dsn)
    try:
        assert await admin.fetchval("SELECT pg_terminate_backend($1, 10000)", pid)
    finally:
        await admin.close()


def _pool(service: JobService) -> StorePool:
    assert isinstance(service.pool, StorePool)
    return service.pool


async def test_a_stream_of_creates_borrows_once_and_gives_it_back_when_idle(
    service: JobService,
) -> None:
    pool = _pool(service)
    held = pool.held
    held.idle_s = 0.2
    for _ in range(20):
        await service.create(JobSpec(job_type="noop"))
    assert (held.uses, held.borrows) == (20, 1)
    pid = held.server_pid
    assert pid is not None
    assert pool.get_idle_size() == pool.get_size() - 1  # out of the pool while held

    async def given_back() -> bool:
        return held.server_pid is None and pool.get_idle_size() == pool.get_size()

    await wait_until(given_back, timeout_s=10, what="the idle connection given back")
    await service.create(JobSpec(job_type="noop"))
    assert held.borrows == 2
    assert (await service.counts())["PENDING"] == 21


async def test_a_held_connection_the_server_ended_is_replaced_and_the_create_succeeds(
    service: JobService, settings: Settings,
) -> None:
    held = _pool(service).held
    held.idle_s = 60.0
    await service.create(JobSpec(job_type="noop"))
    pid = held.server_pid
    await terminate(settings, pid)

    async def noticed() -> bool:
        return held.server_pid is None

    await wait_until(noticed, timeout_s=10, what="the client to see the connection end")
    created = await service.create(JobSpec(job_type="noop"))
    assert held.borrows == 2
    assert held.server_pid not in (None, pid)
    assert (await service.get(created.job_id)).status == "PENDING"


async def test_closing_the_pool_gives_the_held_connection_back(settings: Settings) -> None:
    async with open_service(settings) as svc:
        _pool(svc).held.idle_s = 60.0
        await svc.create(JobSpec(job_type="noop"))
        assert _pool(svc).held.server_pid is not None
        closing = asyncio.ensure_future(svc.pool.close())
        # asyncpg's close waits for every borrowed connection: a held one would hang it
        await asyncio.wait_for(asyncio.shield(closing), timeout=10)


async def test_creates_arriving_as_the_idle_connection_goes_back_never_share_it(
    service: JobService,
) -> None:
    # an idle time of zero: the connection is given back between almost any two creates, so
    # creates keep arriving while one is on its way back to the pool (it must not be taken
    # then, or two statements would meet on one connection)
    _pool(service).held.idle_s = 0.0

    async def stream(n: int) -> None:
        for _ in range(n):
            await service.create(JobSpec(job_type="noop"))
            await asyncio.sleep(0)

    await asyncio.gather(*(stream(50) for _ in range(4)))
    assert (await service.counts())["PENDING"] == 200


async def test_a_workers_leases_and_completions_keep_one_connection(
    service: JobService,
) -> None:
    pool = _pool(service)
    pool.stream.idle_s = 60.0
    await service.create_batch([JobSpec(job_type="noop") for _ in range(30)])
    await service.indexed()
    await service.register_worker("w-stream", [], concurrency=5)
    done: list[tuple[str, int, object]] = []
    for _ in range(6):  # a worker's cycles: completions carried by the next lease
        got = await service.report_and_acquire("w-stream", 5, (), done)
        assert got.outcomes == [None] * len(done)
        done = [(lease.job_id, lease.token, None) for lease in got.leases]
    assert not (await service.report_and_acquire("w-stream", 5, (), done)).leases
    assert (await service.counts())["COMPLETED"] == 30
    assert pool.stream.borrows == 1
    assert pool.stream.uses >= 7
    assert pool.stream.server_pid is not None


async def test_a_pool_of_two_keeps_one_connection_at_most(settings: Settings) -> None:
    """A worker's pool has two connections: with its leases keeping one, a stream of creates
    borrows per create, and an ordinary statement (a heartbeat) still finds one free."""
    pool = await create_pool(settings, max_size=2)
    assert isinstance(pool, StorePool)
    try:
        pool.stream.idle_s = pool.held.idle_s = 60.0
        await pool.fetch_held("SELECT 1")
        assert pool.stream.server_pid is not None
        assert pool.kept == 1
        async with pool.held.acquire() as conn:  # may not keep a second: a plain borrow
            assert await conn.fetchval("SELECT 1") == 1
        assert pool.held.borrows == 0
        assert pool.held.server_pid is None
        assert await asyncio.wait_for(pool.fetchval("SELECT 2"), timeout=10) == 2
        await pool.stream.give_back()
        assert pool.kept == 0
        async with pool.held.acquire() as conn:  # the stream gave its one back: it may keep
            await conn.fetchval("SELECT 1")
        assert pool.held.borrows == 1
        assert pool.kept == 1
    finally:
        await pool.close()
    assert pool.kept == 0


async def test_a_pool_closing_while_its_kept_connection_runs_a_statement_gets_it_back(
    settings: Settings,
) -> None:
    pool = await create_pool(settings, max_size=2)
    assert isinstance(pool, StorePool)
    pool.stream.idle_s = 3600.0  # kept for an hour unless the close takes it back
    running = asyncio.ensure_future(pool.fetch_held("SELECT pg_sleep(0.3)"))
    await wait_until(lambda: _busy(pool), timeout_s=10, what="the statement on the kept one")
    await asyncio.wait_for(pool.close(), timeout=10)  # waits for the statement, not the hour
    await running
    assert pool.kept == 0


async def _busy(pool: StorePool) -> bool:
    return pool.stream.server_pid is not None


async def test_giving_back_a_kept_connection_says_nothing_about_an_outage(
    settings: Settings,
) -> None:
    """A kept connection going back (unused, or found ended while PostgreSQL restarts) is no
    sign that PostgreSQL answers: it must not end the outage the process is in (each false
    end split one restart into many logged outages)."""
    pool = await create_pool(settings, max_size=2)
    assert isinstance(pool, StorePool)
    try:
        pool.stream.idle_s = 3600.0
        await pool.fetch_held("SELECT 1")
        await terminate(settings, pool.stream.server_pid)
        pool.outage.failed(ConnectionRefusedError("as a restart's refused connects say"))
        await pool.stream.give_back()
        assert pool.outage.down
        assert pool.outage.count == 1
        await pool.fetch_held("SELECT 1")  # a statement that succeeds ends it
        assert not pool.outage.down
    finally:
        await pool.close()
