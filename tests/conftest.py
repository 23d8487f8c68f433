"""Shared fixtures. Integration tests use the real servers: the configured ones
(JOBHARNESS_PG_DSN / JOBHARNESS_REDIS_URL) or else the embedded ones, started once per session
(and stopped again if this session started them; under pytest-xdist the main process
starts and stops them for its workers). A migrated template database is copied for
each test (CREATE DATABASE ... TEMPLATE) and each test gets its own Redis key prefix."""

from __future__ import annotations

import os

# One OpenMP thread per process, set before anything loads scikit-learn: its threads spin
# while they wait, and two test workers training at once, each with a thread per core on two
# cores, slowed one test from 10 s to 115 s (its timeout is 120 s). The processes the tests
# start inherit it. (The supervisor limits itself the same way, predictor/serve.py.)
os.environ.setdefault("OMP_NUM_THREADS", "1")

import asyncio
import contextlib
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from core.jobs.backoff import BackoffPolicy
from core.service.jobs import JobService
from core.service.runtime import create_dispatch, embedded_services, resolve_endpoints
from core.settings import Settings, load_settings
from core.store import migrate
from core.store.pools import create_pool


def with_database(dsn: str, database: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + database))


LAYERS = ("unit", "contract", "integration", "e2e")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Each test carries the marker of its layer (its folder), so `pytest -m unit` (or
    contract, integration, e2e) runs one layer alone."""
    for item in items:
        layer = next((p for p in item.path.parts if p in LAYERS), None)
        if layer is None:
            raise pytest.UsageError(f"{item.nodeid}: a test belongs in one of tests/"
                                    f"{{{','.join(LAYERS)}}}")
        item.add_marker(getattr(pytest.mark, layer))


_STARTED = pytest.StashKey[set[str]]()  # the servers the main process started for its workers


def _runs_xdist_workers(config: pytest.Config) -> bool:
    return not hasattr(config, "workerinput") and bool(config.getoption("numprocesses", None))


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist the main process starts the servers its workers share, and stops
    them when the last worker is done (a worker that started them would stop them under the
    others)."""
    if _runs_xdist_workers(config):
        _, started = resolve_endpoints(load_settings())
        config.stash[_STARTED] = {name for name, now in started.items() if now}


def pytest_unconfigure(config: pytest.Config) -> None:
    to_stop = config.stash.get(_STARTED, set())
    if to_stop:
        embedded_services(load_settings()).down(to_stop)


@pytest.fixture(scope="session")
def server_settings(pytestconfig: pytest.Config) -> Iterator[Settings]:
    base = load_settings()
    resolved, started = resolve_endpoints(base)
    yield resolved
    to_stop = {name for name, now in started.items() if now}
    if to_stop and not hasattr(pytestconfig, "workerinput"):
        embedded_services(base).down(to_stop)


@pytest.fixture(scope="session")
async def template_db(server_settings: Settings) -> AsyncIterator[str]:
    assert server_settings.pg_dsn
    name = f"jh_template_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(server_settings.pg_dsn)
    await admin.execute(f"CREATE DATABASE {name}")
    conn = await asyncpg.connect(with_database(server_settings.pg_dsn, name))
    await migrate.migrate(conn, server_settings.schema)
    await conn.close()
    yield name
    await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    await admin.close()


@contextlib.asynccontextmanager
async def fresh_database(server: Settings, template: str) -> AsyncIterator[str]:
    """A new database copied from the migrated template; dropped afterwards."""
    assert server.pg_dsn
    name = f"jh_test_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(server.pg_dsn)
    await admin.execute(f"CREATE DATABASE {name} TEMPLATE {template}")
    try:
        yield with_database(server.pg_dsn, name)
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()


@pytest.fixture
async def test_db(server_settings: Settings, template_db: str) -> AsyncIterator[str]:
    """DSN of a fresh database copied from the migrated template."""
    async with fresh_database(server_settings, template_db) as dsn:
        yield dsn


def settings_for(server: Settings, dsn: str, **changes: object) -> Settings:
    """Settings for one test: its own database and Redis prefix, fast backoff."""
    base = replace(server, pg_dsn=dsn, prefix=f"t{uuid.uuid4().hex[:10]}",
                   backoff=BackoffPolicy(base_s=0.05, max_s=0.5, jitter_s=0.01), lease_s=5.0)
    return replace(base, **changes)  # type: ignore[arg-type]


@pytest.fixture
def settings(server_settings: Settings, test_db: str) -> Settings:
    return settings_for(server_settings, test_db)


@contextlib.asynccontextmanager
async def open_service(settings: Settings, *, redis_connections: int = 12
                       ) -> AsyncIterator[JobService]:
    """A JobService on the test's database and prefix; its Redis keys are flushed after."""
    pool = await create_pool(settings, max_size=12)
    dispatch = create_dispatch(settings, max_connections=redis_connections)
    svc = JobService(pool, dispatch, settings)
    try:
        yield svc
    finally:
        await dispatch.flush_prefix()
        await dispatch.close()
        await pool.close()


@pytest.fixture
async def service(settings: Settings) -> AsyncIterator[JobService]:
    async with open_service(settings) as svc:
        yield svc


@contextlib.contextmanager
def private_valkey(folder: Path) -> Iterator[str]:
    """A Valkey server of the caller's own, without a password, stopped on exit; yields its
    address (host:port) once it accepts connections."""
    from core.infra.embedded import free_port, valkey_bin

    port = free_port()
    proc = subprocess.Popen([str(valkey_bin()), "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no", "--dir", str(folder)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert proc.poll() is None, "valkey exited"
            assert time.monotonic() < deadline, "valkey did not start"
            time.sleep(0.05)  # polled: another process's readiness
    try:
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def wait_until(
    check: Callable[[], Awaitable[bool]], *, timeout_s: float = 20.0, what: str = "condition"
) -> None:
    """Poll a store-side condition until it holds; fail the test after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.02)
