"""Schema migrations: numbered, reversible SQL files applied in one configurable schema.

Each migration runs in its own transaction together with its row in `schema_migrations`, under
an advisory lock, so concurrent migrators are safe and migrate is idempotent. Rolling back to 0
leaves nothing behind (the bookkeeping table and, when empty, the schema are dropped too).
"""

from __future__ import annotations

import hashlib
import importlib.resources
import re
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from core.errors import MigrationError

_FILE_RE = re.compile(r"^(\d{3})_([a-z0-9_]+)\.(up|down)\.sql$")
EXPECTED_TABLES = ("jobs", "workers", "job_executions", "dead_letter_queue", "job_dependencies")
EXPECTED_FUNCTIONS = ("get_runnable_jobs", "mark_stale_workers", "update_jobs_updated_at")
EXPECTED_TRIGGERS = ("trg_jobs_updated_at",)
MIN_INDEXES = 21


@dataclass(frozen=True, kw_only=True)
class Migration:
    version: int
    name: str
    up_sql: str
    down_sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.up_sql.encode()).hexdigest()[:16]


@dataclass(frozen=True, kw_only=True)
class MigrationState:
    version: int
    name: str
    applied_at: datetime | None


def load_migrations() -> list[Migration]:
    """All migrations shipped in the `migrations` package, by version."""
    files: dict[int, dict[str, str]] = {}
    names: dict[int, str] = {}
    for entry in importlib.resources.files("migrations").iterdir():
        m = _FILE_RE.match(entry.name)
        if not m:
            continue
        version = int(m.group(1))
        if names.setdefault(version, m.group(2)) != m.group(2):
            raise MigrationError(f"two migrations share version {version:03d}")
        files.setdefault(version, {})[m.group(3)] = entry.read_text()
    out = []
    for version in sorted(files):
        pair = files[version]
        if set(pair) != {"up", "down"}:
            raise MigrationError(f"migration {version:03d} lacks its up or down file")
        out.append(
            Migration(version=version, name=names[version], up_sql=pair["up"],
                      down_sql=pair["down"])
        )
    if [m.version for m in out] != list(range(1, len(out) + 1)):
        raise MigrationError("migration versions must be 1..N without gaps")
    return out


def _ident(schema: str) -> str:
    if not re.match(r"^[a-z_][a-z0-9_]{0,62}$", schema):
        raise MigrationError(f"invalid schema name {schema!r}")
    return f'"{schema}"'


async def _prepare(conn: asyncpg.Connection, schema: str) -> None:
    """Lock migrations of this schema for the current transaction and point at the schema."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext('jobharness.migrate.' || $1))",
                       schema)
    await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {_ident(schema)}")
    await conn.execute(f"SET LOCAL search_path TO {_ident(schema)}")
    await conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,"
        " applied_at timestamptz NOT NULL DEFAULT clock_timestamp())"
    )


async def _applied(conn: asyncpg.Connection, schema: str) -> dict[int, asyncpg.Record]:
    exists = await conn.fetchval("SELECT to_regclass($1)", f"{schema}.schema_migrations")
    if exists is None:
        return {}
    rows = await conn.fetch(
        f"SELECT version, name, checksum, applied_at FROM {_ident(schema)}.schema_migrations"
    )
    return {r["version"]: r for r in rows}


async def migrate(conn: asyncpg.Connection, schema: str, *, to: int | None = None) -> list[int]:
    """Apply pending migrations up to `to` (default: all); return the versions applied."""
    migrations = load_migrations()
    target = len(migrations) if to is None else to
    if not 0 <= target <= len(migrations):
        raise MigrationError(f"--to must be between 0 and {len(migrations)}, got {target}")
    applied: list[int] = []
    for mig in migrations[:target]:
        async with conn.transaction():
            await _prepare(conn, schema)
            done = await _applied(conn, schema)
            if mig.version in done:
                if done[mig.version]["checksum"] != mig.checksum:
                    raise MigrationError(
                        f"migration {mig.version:03d} changed after it was applied"
                    )
                continue
            try:
                await conn.execute(mig.up_sql)
            except asyncpg.PostgresError as exc:
                name = f"{mig.version:03d}_{mig.name}"
                raise MigrationError(f"migration {name} failed: {exc}") from exc
            await conn.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                mig.version, mig.name, mig.checksum,
            )
            applied.append(mig.version)
    return applied


async def rollback(conn: asyncpg.Connection, schema: str, *, to: int = 0) -> list[int]:
    """Revert applied migrations above `to`, newest first; return the versions reverted."""
    migrations = {m.version: m for m in load_migrations()}
    if not 0 <= to <= len(migrations):
        raise MigrationError(f"--to must be between 0 and {len(migrations)}, got {to}")
    reverted: list[int] = []
    async with conn.transaction():
        await _prepare(conn, schema)
        done = await _applied(conn, schema)
        for version in sorted(done, reverse=True):
            if version <= to:
                break
            try:
                await conn.execute(migrations[version].down_sql)
            except asyncpg.PostgresError as exc:
                raise MigrationError(f"rollback of {version:03d} failed: {exc}") from exc
            await conn.execute("DELETE FROM schema_migrations WHERE version = $1", version)
            reverted.append(version)
        if to == 0:
            await conn.execute("DROP TABLE schema_migrations")
            empty = await conn.fetchval(
                "SELECT NOT EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n"
                " ON n.oid = c.relnamespace WHERE n.nspname = $1)"
                " AND NOT EXISTS (SELECT 1 FROM pg_proc p JOIN pg_namespace n"
                " ON n.oid = p.pronamespace WHERE n.nspname = $1)",
                schema,
            )
            if empty:
                await conn.execute(f"DROP SCHEMA {_ident(schema)}")
    return reverted


async def status(conn: asyncpg.Connection, schema: str) -> list[MigrationState]:
    done = await _applied(conn, schema)
    return [
        MigrationState(
            version=m.version,
            name=m.name,
            applied_at=done[m.version]["applied_at"] if m.version in done else None,
        )
        for m in load_migrations()
    ]


@dataclass(frozen=True, kw_only=True)
class VerifyReport:
    tables: list[str]
    indexes: list[str]
    functions: list[str]
    triggers: list[str]
    missing: list[str]

    @property
    def ok(self) -> bool:
        return not self.missing

    def counts(self) -> dict[str, int]:
        return {
            "tables": len(self.tables),
            "indexes": len(self.indexes),
            "functions": len(self.functions),
            "triggers": len(self.triggers),
        }


async def verify(conn: asyncpg.Connection, schema: str) -> VerifyReport:
    """Check the schema's objects as the seed's verify_schema.sh did."""
    tables = [
        r["tablename"]
        for r in await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = $1 AND tablename = ANY($2)"
            " ORDER BY tablename",
            schema, list(EXPECTED_TABLES),
        )
    ]
    indexes = [
        r["indexname"]
        for r in await conn.fetch(
            "SELECT indexname FROM pg_indexes WHERE schemaname = $1 AND tablename = ANY($2)"
            " ORDER BY indexname",
            schema, list(EXPECTED_TABLES),
        )
    ]
    functions = [
        r["proname"]
        for r in await conn.fetch(
            "SELECT DISTINCT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
            " WHERE n.nspname = $1 AND p.proname = ANY($2) ORDER BY p.proname",
            schema, list(EXPECTED_FUNCTIONS),
        )
    ]
    triggers = [
        r["tgname"]
        for r in await conn.fetch(
            "SELECT t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = $1 AND NOT t.tgisinternal AND t.tgname = ANY($2)",
            schema, list(EXPECTED_TRIGGERS),
        )
    ]
    missing = [f"table {t}" for t in EXPECTED_TABLES if t not in tables]
    missing += [f"function {f}" for f in EXPECTED_FUNCTIONS if f not in functions]
    missing += [f"trigger {t}" for t in EXPECTED_TRIGGERS if t not in triggers]
    if len(indexes) < MIN_INDEXES:
        missing.append(f"indexes: {len(indexes)} found, at least {MIN_INDEXES} expected")
    return VerifyReport(
        tables=tables, indexes=indexes, functions=functions, triggers=triggers, missing=missing
    )
