"""Which PostgreSQL driver errors mean "the server is not available right now" (retry later,
503) and which mean "this statement is wrong" (a bug or a conflict: not retried blindly)."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from chaos.actions import ActionError, Endpoints, restart_store
from core.errors import StoreUnavailable
from core.store.queries import store_errors, store_unavailable

UNAVAILABLE = [
    ConnectionRefusedError(111, "Connection refused"),
    ConnectionResetError(104, "Connection reset by peer"),
    TimeoutError(),
    asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),
    asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator command"),
    asyncpg.exceptions.CrashShutdownError("terminating connection because of crash"),
    asyncpg.exceptions.TooManyConnectionsError("sorry, too many clients already"),
    asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle"),
    asyncpg.exceptions.ClientCannotConnectError("cannot connect"),
    asyncpg.InterfaceError("connection is closed"),
    asyncpg.exceptions.InternalClientError("cannot switch to state 11"),
]
STATEMENT = [
    asyncpg.exceptions.UniqueViolationError("duplicate key"),
    asyncpg.exceptions.DeadlockDetectedError("deadlock detected"),
    asyncpg.exceptions.UndefinedTableError("relation does not exist"),
    asyncpg.exceptions.DiskFullError("no space left"),  # 53100: not a "right now" condition
    ValueError("bad"),
]


@pytest.mark.parametrize("exc", UNAVAILABLE, ids=lambda e: type(e).__name__)
def test_unavailable_errors_become_store_unavailable(exc: BaseException) -> None:
    assert store_unavailable(exc)
    with pytest.raises(StoreUnavailable, match=type(exc).__name__) as caught, store_errors():
        raise exc
    assert caught.value.__cause__ is exc


@pytest.mark.parametrize("exc", STATEMENT, ids=lambda e: type(e).__name__)
def test_statement_errors_pass_through(exc: BaseException) -> None:
    assert not store_unavailable(exc)
    with pytest.raises(type(exc)), store_errors():
        raise exc


@pytest.mark.parametrize(("target", "mode", "down_s", "says"), [
    ("mysql", None, 1.0, "postgres or redis"),
    ("postgres", "smart", 1.0, "fast, immediate, kill"),
    ("redis", "immediate", 1.0, "one of kill"),
    ("postgres", "kill", -1.0, "between 0 and 300"),
    ("postgres", "kill", 1.0, "embedded servers"),  # no embedded servers in these Endpoints
])
def test_restart_store_refuses_what_it_cannot_do(target: str, mode: str | None,
                                                 down_s: float, says: str) -> None:
    with pytest.raises(ActionError, match=says):
        asyncio.run(restart_store(Endpoints(), target, mode, down_s))


def test_an_outage_is_counted_and_logged_once_from_first_failure_to_first_success(
        caplog: pytest.LogCaptureFixture) -> None:
    from core.store.outage import Outage

    seen: list[bool] = []
    outage = Outage("PostgreSQL")
    outage.subscribe(seen.append)
    outage.succeeded()  # nothing was down: nothing to say
    for _ in range(5):
        outage.failed(ConnectionRefusedError(111, "refused"))
    assert outage.down
    assert (outage.count, outage.failed_calls) == (1, 5)
    outage.succeeded()
    outage.succeeded()
    outage.failed(TimeoutError())
    assert outage.down
    assert outage.count == 2
    assert seen == [True, False, True]
    lines = [r.getMessage() for r in caplog.records if r.name == "jobharness.store"]
    assert [line.split(" (")[0].split(" after")[0] for line in lines] == [
        "PostgreSQL unavailable", "PostgreSQL available again", "PostgreSQL unavailable"]
    assert all(r.exc_info is None for r in caplog.records)
