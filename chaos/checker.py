"""The invariant checker: after a run (or a drill) has drained, did the system keep its
promises? It reads only the contract (the seed's tables and Redis keys), so it can judge any
implementation of that schema.

Checks: lost jobs (accepted, not terminal after the drain deadline), jobs completed more than
once, stuck leases, orphan Redis entries, executions without a job, DLQ entries without a
DEAD job, COMPLETED jobs without a COMPLETED execution, fencing tokens that do not rise from
one lease of a job to the next, a job leased again after its completion was accepted; and,
where the schema has limits
(migration 010), limits overrun: more leases of a job type or tenant open at one instant
than its `max_running` (from the executions' lease intervals, as admission counts them).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from core.contract.keys import Keys
from core.contract.observe import (
    CHECKS,
    CUTOFF_CHECKS,
    HAS_LIMITS_TABLE,
    LIMIT_OVERRUNS,
    LIMIT_OVERRUNS_DESCRIPTION,
    LIVE_AMONG,
)
from core.errors import DispatchUnavailable, StoreUnavailable

SAMPLE = 10


@dataclass
class Check:
    name: str
    description: str
    violations: int
    examples: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.violations == 0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


async def check_postgres(conn: asyncpg.Connection,
                         created_before: datetime | None = None) -> list[Check]:
    """Every PostgreSQL check; `created_before`: judge lost jobs among those created by then
    only (a drill alone against a system still taking load), None: all of them."""
    out = []
    queries = list(CHECKS)
    if await conn.fetchval(HAS_LIMITS_TABLE):
        queries.append(("limit_overruns", LIMIT_OVERRUNS_DESCRIPTION, LIMIT_OVERRUNS))
    for name, description, sql in queries:
        args = (created_before,) if name in CUTOFF_CHECKS else ()
        rows = await conn.fetch(sql, *args)
        out.append(Check(name=name, description=description, violations=len(rows),
                         examples=[r["id"] for r in rows[:SAMPLE]]))
    return out


async def check_redis(conn: asyncpg.Connection, client: aioredis.Redis, prefix: str) -> Check:
    """Dispatch entries (queues, delayed, processing) with no PENDING/PROCESSING job behind."""
    k = Keys(prefix)
    keys = [*k.priority_queues, k.delayed, k.processing]
    members: set[str] = set()
    for key in keys:
        members |= {m.decode() if isinstance(m, bytes) else m
                    for m in await client.zrange(key, 0, -1)}
    live = {r["id"] for r in await conn.fetch(LIVE_AMONG, sorted(members))} if members else set()
    orphans = sorted(members - live)
    return Check(name="orphan_redis_entries",
                 description="Redis dispatch entries with no live job behind them",
                 violations=len(orphans), examples=orphans[:SAMPLE])


async def redis_agrees(pool: Any, client: aioredis.Redis, prefix: str) -> bool:
    """No entry of Redis's dispatch index lacks a live job (what `check_redis` judges); a
    store that cannot be read does not agree yet. Runs and drills wait for this before they
    judge: a lease a worker recorded in Redis while its calls were failing stays until its
    deadline, then the reconciler drops it."""
    try:
        async with pool.acquire() as conn:
            return (await check_redis(conn, client, prefix)).violations == 0
    except (DispatchUnavailable, StoreUnavailable, OSError, RedisError):
        return False


async def check_all(conn: asyncpg.Connection, client: aioredis.Redis | None, prefix: str,
                    created_before: datetime | None = None) -> list[Check]:
    checks = await check_postgres(conn, created_before)
    if client is not None:
        checks.append(await check_redis(conn, client, prefix))
    return checks
