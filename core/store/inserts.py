"""Writing a planned create (`core.jobs.planning`) to PostgreSQL in one transaction: the
idempotency lookups, dependency locks and checks, the INSERT (or COPY for a large simple
batch), dependency edges and priority inheritance. Unknown dependencies and dependencies that
can no longer complete (DEAD or CANCELLED) are refused here, where their state is locked.
"""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import asyncpg

from core.errors import IdempotencyConflict, InvalidInput, UnknownDependency
from core.jobs.model import JobStatus, ValidatedSpec
from core.jobs.planning import CreateResult, Plan, is_simple, spec_hash
from core.store.pools import StorePool
from core.store.queries import Conn, q


class _RaceLost(Exception):
    """A concurrent create took an idempotency key between lookup and insert: start over."""


async def insert_plan(
    pool: asyncpg.Pool, plan: Plan, on_ready: Callable[[Iterable[Any]], None],
    on_raised: Callable[[Iterable[Any]], None] | None = None,
) -> list[CreateResult]:
    """Insert a validated plan; `on_ready` receives the rows to index for dispatch and
    `on_raised` the jobs whose priority the new jobs raised (priority inheritance)."""
    simple = is_simple(plan)
    for _ in range(3):
        try:
            # a simple plan's one statement runs on the connection a stream of creates keeps
            async with (pool.held.acquire() if simple and isinstance(pool, StorePool)
                        else pool.acquire()) as conn:
                raised: list[asyncpg.Record] = []
                if simple:
                    results, ready = await _insert_simple(conn, plan)
                else:
                    async with conn.transaction():
                        results, ready, raised = await _insert(conn, plan)
        except _RaceLost:
            continue
        on_ready(ready)
        if on_raised is not None and raised:
            on_raised(raised)
        return results
    raise IdempotencyConflict("(concurrent)", "unknown")


async def _idempotent_hits(
    conn: Conn, v: list[ValidatedSpec], hashes: list[str | None]
) -> tuple[dict[int, uuid.UUID], dict[int, str]]:
    """Specs whose idempotency key already names a job (same spec) are not inserted again."""
    existing: dict[int, uuid.UUID] = {}
    existing_status: dict[int, str] = {}
    keys = {(x.spec.tenant or "", x.spec.idempotency_key): i for i, x in enumerate(v)
            if x.spec.idempotency_key}
    if keys:
        scopes, ikeys = zip(*keys, strict=True)
        for row in await conn.fetch(q("find_idempotent"), list(scopes), list(ikeys)):
            i = keys[(row["scope"], row["idempotency_key"])]
            if row["idempotency_hash"] != hashes[i]:
                raise IdempotencyConflict(row["idempotency_key"], str(row["id"]))
            existing[i] = row["id"]
            existing_status[i] = row["status"]
    return existing, existing_status


async def _lock_dependencies(
    conn: Conn, dep_ids: set[uuid.UUID]
) -> dict[uuid.UUID, str]:
    """Lock existing dependencies (FOR SHARE) and return their statuses; refuse unknown ones
    and ones that can never complete."""
    if not dep_ids:
        return {}
    rows = await conn.fetch(q("lock_dependencies"), list(dep_ids))
    dep_status = {r["id"]: r["status"] for r in rows}
    missing = sorted(str(d) for d in dep_ids - set(dep_status))
    if missing:
        raise UnknownDependency(missing)
    doomed = sorted(str(d) for d, s in dep_status.items()
                    if s in (JobStatus.DEAD, JobStatus.CANCELLED))
    if doomed:
        raise InvalidInput("depends_on", f"job(s) {', '.join(doomed)} can never complete")
    return dep_status


COPY_MIN_JOBS = 100  # simple batches at least this large go through COPY
_COPY_COLUMNS = ["id", "job_type", "payload", "priority", "status", "required_capability",
                 "max_retries", "timeout_s", "tenant"]
_PENDING = JobStatus.PENDING


async def _insert_simple(
    conn: Conn, plan: Plan
) -> tuple[list[CreateResult], list[dict[str, Any]] | list[asyncpg.Record]]:
    """A batch without dependencies or idempotency keys: every job is new and PENDING. A large
    one due now is streamed with COPY (CSV), one statement and atomic like the INSERT."""
    v = plan.validated
    if len(v) == 1:  # the common single create: one row, one statement
        x = v[0].spec
        if x.run_at is None and not x.delay_s:  # due now: nothing to read back
            await conn.execute(q("insert_job_now"), plan.ids[0], x.job_type, v[0].payload_json,
                               x.priority, x.required_capability, x.max_retries,
                               float(x.timeout_s), x.tenant)
            sid = str(plan.ids[0])
            return [CreateResult(job_id=sid, status=_PENDING, created=True, ref=x.ref)], [
                {"id": sid, "priority": x.priority, "required_capability": x.required_capability,
                 "delay_ms": 0, "job_type": x.job_type, "tenant": x.tenant}]
        row = await conn.fetchrow(q("insert_job"), plan.ids[0], x.job_type, v[0].payload_json,
                                  x.priority, x.required_capability, x.max_retries,
                                  float(x.timeout_s), x.run_at, float(x.delay_s), x.tenant)
        assert row is not None  # an INSERT ... RETURNING without a conflict clause
        return [CreateResult(job_id=str(plan.ids[0]), status=_PENDING, created=True,
                             ref=x.ref)], [row]
    if len(v) < COPY_MIN_JOBS or any(x.spec.run_at is not None or x.spec.delay_s for x in v):
        results, rows, _ = await _insert(conn, plan)  # no edges: nothing raised
        return results, rows
    sids = [str(i) for i in plan.ids]  # each id as text once: CSV, results and Redis
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(
        (sid, x.spec.job_type, x.payload_json, x.spec.priority, "PENDING",
         x.spec.required_capability, x.spec.max_retries, float(x.spec.timeout_s),
         x.spec.tenant)
        for sid, x in zip(sids, v, strict=True))
    await conn.copy_to_table("jobs", source=io.BytesIO(buf.getvalue().encode()),
                             columns=_COPY_COLUMNS, format="csv")
    ready = [{"id": sid, "priority": x.spec.priority,
              "required_capability": x.spec.required_capability, "delay_ms": 0,
              "job_type": x.spec.job_type, "tenant": x.spec.tenant}
             for sid, x in zip(sids, v, strict=True)]
    results = [CreateResult(job_id=sid, status=_PENDING, created=True, ref=x.spec.ref)
               for sid, x in zip(sids, v, strict=True)]
    return results, ready


async def _insert(
    conn: Conn, plan: Plan
) -> tuple[list[CreateResult], list[asyncpg.Record], list[asyncpg.Record]]:
    v = plan.validated
    hashes = [spec_hash(x) if x.spec.idempotency_key else None for x in v]
    existing, existing_status = await _idempotent_hits(conn, v, hashes)
    ids = [existing.get(i, plan.ids[i]) for i in range(len(v))]
    new = [i for i in range(len(v)) if i not in existing]
    dep_ids = {d for i in new for d in plan.external.get(i, [])}
    dep_ids |= {ids[d] for i in new for d in plan.internal.get(i, []) if d in existing}
    dep_status = await _lock_dependencies(conn, dep_ids)

    def deps_of(i: int) -> list[uuid.UUID]:
        return [*plan.external.get(i, []), *(ids[d] for d in plan.internal.get(i, []))]

    def status_of(i: int) -> str:
        for d in deps_of(i):
            if dep_status.get(d, JobStatus.WAITING) != JobStatus.COMPLETED:
                return JobStatus.WAITING.value
        return JobStatus.PENDING.value

    statuses = {i: status_of(i) for i in new} | existing_status
    inserted: list[asyncpg.Record] = []
    raised: list[asyncpg.Record] = []
    if new:
        s = [v[i].spec for i in new]
        inserted = await conn.fetch(
            q("insert_jobs"),
            [ids[i] for i in new], [x.job_type for x in s], [v[i].payload_json for i in new],
            [x.priority for x in s], [statuses[i] for i in new],
            [x.required_capability for x in s], [x.idempotency_key for x in s],
            [hashes[i] for i in new], [x.max_retries for x in s], [float(x.timeout_s) for x in s],
            [x.run_at for x in s], [float(x.delay_s) for x in s], [x.tenant for x in s],
        )
        if len(inserted) != len(new):
            raise _RaceLost()
        edges = [(ids[i], d) for i in new for d in deps_of(i)]
        if edges:
            await conn.execute(q("insert_dependencies"), [a for a, _ in edges],
                               [b for _, b in edges])
            # what the new jobs wait on runs at least at their priority (raise only: a
            # concurrent create cannot undo this one's raise)
            raised = await conn.fetch(q("inherit_priority"),
                                      list({a for a, _ in edges}), True)
    ready = [r for r in inserted if r["status"] == JobStatus.PENDING]
    results = [
        CreateResult(job_id=str(ids[i]),
                     status=JobStatus(statuses[i]),
                     created=i not in existing, ref=v[i].spec.ref)
        for i in range(len(v))
    ]
    return results, ready, raised
