"""Migrations (reversible, idempotent, verified) and the CLI commands around them."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import asyncpg
import pytest

from core.cli.main import main
from core.settings import Settings
from core.store import migrate

LATEST = max(m.version for m in migrate.load_migrations())


async def objects_in(conn: asyncpg.Connection, schema: str) -> int:
    return int(await conn.fetchval(
        "SELECT (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        "        WHERE n.nspname = $1)"
        "     + (SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
        "        WHERE n.nspname = $1)"
        "     + (SELECT count(*) FROM pg_namespace WHERE nspname = $1)", schema))


async def test_migrate_rollback_migrate(test_db: str, settings: Settings) -> None:
    conn = await asyncpg.connect(test_db)
    schema = settings.schema
    try:
        report = await migrate.verify(conn, schema)
        assert report.ok, report.missing
        assert report.counts()["tables"] == 5
        assert report.counts()["indexes"] >= 21
        assert report.counts()["functions"] == 3
        assert report.counts()["triggers"] == 1
        assert await migrate.migrate(conn, schema) == []  # idempotent

        assert await migrate.rollback(conn, schema, to=3) == list(range(LATEST, 3, -1))
        tables = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = $1", schema)
        assert {r["tablename"] for r in tables} == {"jobs", "workers", "job_executions",
                                                    "schema_migrations"}
        assert not (await migrate.verify(conn, schema)).ok

        reverted = await migrate.rollback(conn, schema)
        assert reverted == [3, 2, 1]
        assert await objects_in(conn, schema) == 0  # nothing left behind

        assert await migrate.migrate(conn, schema) == list(range(1, LATEST + 1))
        assert (await migrate.verify(conn, schema)).ok
        states = await migrate.status(conn, schema)
        assert all(s.applied_at is not None for s in states)
    finally:
        await conn.close()


async def test_migrate_to_bounds(test_db: str, settings: Settings) -> None:
    conn = await asyncpg.connect(test_db)
    try:
        with pytest.raises(migrate.MigrationError, match="--to"):
            await migrate.migrate(conn, settings.schema, to=99)
        with pytest.raises(migrate.MigrationError, match="--to"):
            await migrate.rollback(conn, settings.schema, to=-1)
    finally:
        await conn.close()


def cli(settings: Settings, *args: str) -> list[str]:
    assert settings.pg_dsn
    assert settings.redis_url
    return [*args, "--pg-dsn", settings.pg_dsn, "--redis-url", settings.redis_url,
            "--prefix", settings.prefix]


def test_cli_db_verify_and_status(settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(cli(settings, "db", "verify", "--json")) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["tables"], out["functions"], out["triggers"]) == (5, 3, 1)
    assert out["indexes"] >= 21
    assert out["ok"] is True
    assert main(cli(settings, "db", "verify")) == 0
    printed = capsys.readouterr().out.strip()
    assert "5 tables" in printed
    # the operations guide quotes this line for the default schema: they must not drift
    doc = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()
    quoted = re.search(r"`schema gap006: ([^`]+)`", doc)
    assert quoted is not None
    assert printed.split(": ", 1)[1] == quoted.group(1)
    assert main(cli(settings, "db", "status", "--json")) == 0
    assert len(json.loads(capsys.readouterr().out)) == LATEST


def test_cli_verify_fails_when_an_object_is_missing(
    settings: Settings, test_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    async def drop() -> None:
        conn = await asyncpg.connect(test_db)
        await conn.execute(f"DROP FUNCTION {settings.schema}.mark_stale_workers(double precision)")
        await conn.close()

    asyncio.run(drop())
    assert main(cli(settings, "db", "verify")) == 1
    assert "function mark_stale_workers" in capsys.readouterr().out


def test_cli_rollback_undoes_one_step_and_drops_all_only_with_yes(
        settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(cli(settings, "db", "rollback", "--json")) == 0
    assert json.loads(capsys.readouterr().out)["reverted"] == [LATEST]  # one step, no more
    assert main(cli(settings, "db", "rollback", "--to", "0")) == 1
    assert "give --yes" in capsys.readouterr().err
    assert main(cli(settings, "db", "status", "--json")) == 0
    applied = [r for r in json.loads(capsys.readouterr().out) if r["applied_at"]]
    assert len(applied) == LATEST - 1  # nothing dropped by the refused command
    assert main(cli(settings, "db", "rollback", "--to", "0", "--yes", "--json")) == 0
    assert json.loads(capsys.readouterr().out)["reverted"] == list(range(LATEST - 1, 0, -1))
    assert main(cli(settings, "db", "migrate", "--json")) == 0


def test_cli_errors_are_one_line(settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(cli(settings, "db", "status", "--to", "2")) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    assert "--to" in err
    assert "Traceback" not in err
    assert main(["db", "status", "--pg-dsn", "postgresql://nobody@127.0.0.1:1/x",
                 "--redis-url", "redis://127.0.0.1:1/0"]) == 1
    assert "cannot connect to PostgreSQL" in capsys.readouterr().err


def test_services_up_reuse_status_down(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = str(tmp_path / "data")
    assert main(["services", "up", "--data-dir", data, "--json"]) == 0
    first = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert all(r["running"] and r["started_now"] for r in first.values())
    # each server has a generated password, kept 0600 in the services folder, never printed
    assert first["postgres"]["url"].startswith("postgresql://postgres:***@127.0.0.1:")
    assert first["valkey"]["url"].startswith("redis://:***@127.0.0.1:")
    secrets_file = Path(data) / "services" / "secrets.json"
    assert secrets_file.stat().st_mode & 0o777 == 0o600
    secret = json.loads(secrets_file.read_text())
    assert set(secret) == {"postgres", "valkey"}
    assert not any(pw in json.dumps(first) for pw in secret.values())
    port = first["postgres"]["url"].rsplit(":", 1)[1].split("/")[0]

    async def connect(password: str | None) -> None:
        conn = await asyncpg.connect(host="127.0.0.1", port=int(port), user="postgres",
                                     password=password, database="postgres")
        await conn.close()

    with pytest.raises(asyncpg.InvalidPasswordError):  # no password, no superuser
        asyncio.run(connect("wrong"))
    asyncio.run(connect(secret["postgres"]))
    try:
        assert main(["services", "up", "--data-dir", data, "--json"]) == 0
        again = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
        assert not any(r["started_now"] for r in again.values())  # reused
        assert again["postgres"]["pid"] == first["postgres"]["pid"]
        assert main(["services", "status", "--data-dir", data]) == 0
    finally:
        assert main(["services", "down", "--data-dir", data]) == 0
    capsys.readouterr()
    assert main(["services", "status", "--data-dir", data, "--json"]) == 1
    assert not any(r["running"] for r in json.loads(capsys.readouterr().out))
