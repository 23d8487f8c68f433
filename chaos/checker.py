"""The invariant checker: after a run (or a drill) has drained, did the system keep its
promises? It reads only the contract (the seed's tables and Redis keys), so it can judge any
implementation of that schema.

Checks: lost jobs (accepted, not terminal after the drain deadline), jobs completed more than
once, stuck leases, orphan Redis entries, executions without a job, DLQ entries without a
DEAD job, COMPLETED jobs without a COMPLETED execution; and, where the schema has limits
(migration 010), limits overrun: more leases of a job type or tenant open at one instant
than its `max_running` (from the executions' lease intervals, as admission counts them).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import asyncpg
import redis.asyncio as aioredis

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


QUERIES: list[tuple[str, str, str]] = [
    ("lost_jobs", "accepted jobs not in a terminal state after the drain deadline",
     "SELECT id::text AS id FROM jobs WHERE status NOT IN ('COMPLETED', 'DEAD', 'CANCELLED')"),
    ("completed_twice", "jobs with more than one COMPLETED execution",
     "SELECT job_id::text AS id FROM job_executions WHERE status = 'COMPLETED'"
     " GROUP BY job_id HAVING count(*) > 1"),
    ("completed_without_execution", "COMPLETED jobs with no COMPLETED execution",
     "SELECT j.id::text AS id FROM jobs j WHERE j.status = 'COMPLETED' AND NOT EXISTS ("
     " SELECT 1 FROM job_executions e WHERE e.job_id = j.id AND e.status = 'COMPLETED')"),
    ("stuck_leases", "PROCESSING jobs whose lease ran out more than a minute ago",
     "SELECT id::text AS id FROM jobs WHERE status = 'PROCESSING'"
     " AND lease_expires_at < clock_timestamp() - interval '60 seconds'"),
    ("executions_without_job", "execution rows whose job does not exist",
     "SELECT e.id::text AS id FROM job_executions e"
     " WHERE NOT EXISTS (SELECT 1 FROM jobs j WHERE j.id = e.job_id)"),
    ("dlq_without_dead_job", "live dead-letter entries whose job is not DEAD",
     "SELECT q.job_id::text AS id FROM dead_letter_queue q LEFT JOIN jobs j ON j.id = q.job_id"
     " WHERE q.requeued_at IS NULL AND (j.id IS NULL OR j.status <> 'DEAD')"),
]

# Each execution is a lease from started_at to finished_at (still open: to now); at equal
# instants an end counts before a start. Uses the limits as they stand at check time.
LIMIT_OVERRUNS = """
WITH lim AS (
    SELECT scope, name, max_running FROM job_limits WHERE max_running IS NOT NULL
), ev AS (
    SELECT l.scope, l.name, l.max_running, v.t, v.d
    FROM lim l
    JOIN jobs j ON (l.scope = 'job_type' AND j.job_type = l.name)
                OR (l.scope = 'tenant' AND j.tenant = l.name)
    JOIN job_executions e ON e.job_id = j.id
    CROSS JOIN LATERAL (VALUES (e.started_at, 1),
                               (coalesce(e.finished_at, clock_timestamp()), -1)) v(t, d)
), open_at AS (
    SELECT scope, name, max_running,
           sum(d) OVER (PARTITION BY scope, name ORDER BY t, d
                        ROWS UNBOUNDED PRECEDING) AS open
    FROM ev
)
SELECT scope || ' ' || name || ': ' || max(open) || ' leases at once, limit '
       || max_running AS id
FROM open_at GROUP BY scope, name, max_running HAVING max(open) > max_running
ORDER BY 1
"""


async def check_postgres(conn: asyncpg.Connection) -> list[Check]:
    out = []
    queries = list(QUERIES)
    if await conn.fetchval("SELECT to_regclass('job_limits') IS NOT NULL"):
        queries.append(("limit_overruns", "job types or tenants with more leases open at "
                        "once than their max_running", LIMIT_OVERRUNS))
    for name, description, sql in queries:
        rows = await conn.fetch(sql)
        out.append(Check(name=name, description=description, violations=len(rows),
                         examples=[r["id"] for r in rows[:SAMPLE]]))
    return out


async def check_redis(conn: asyncpg.Connection, client: aioredis.Redis, prefix: str) -> Check:
    """Dispatch entries (queues, delayed, processing) with no PENDING/PROCESSING job behind."""
    keys = [f"{prefix}:{k}" for k in ("high-priority-queue", "medium-priority-queue",
                                      "low-priority-queue", "delayed-queue",
                                      "processing-queue")]
    members: set[str] = set()
    for key in keys:
        members |= {m.decode() if isinstance(m, bytes) else m
                    for m in await client.zrange(key, 0, -1)}
    live = {r["id"] for r in await conn.fetch(
        "SELECT id::text AS id FROM jobs WHERE status IN ('PENDING', 'PROCESSING')"
        " AND id::text = ANY($1)", sorted(members))} if members else set()
    orphans = sorted(members - live)
    return Check(name="orphan_redis_entries",
                 description="Redis dispatch entries with no live job behind them",
                 violations=len(orphans), examples=orphans[:SAMPLE])


async def check_all(conn: asyncpg.Connection, client: aioredis.Redis | None, prefix: str
                    ) -> list[Check]:
    checks = await check_postgres(conn)
    if client is not None:
        checks.append(await check_redis(conn, client, prefix))
    return checks
