"""Job creation: validation, batch refs, dependency checks and idempotency, in one transaction.

Nothing is written unless every spec is valid (invariant 7). Dependencies may name existing
jobs (by id) or other jobs of the same batch (by `ref`); cycles, unknown ids and dependencies
that can no longer complete (DEAD or CANCELLED) are refused.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from core.depgraph import check_acyclic
from core.errors import IdempotencyConflict, InvalidInput, JobHarnessError, UnknownDependency
from core.model import JobStatus, SpecLimits, ValidatedSpec, validate_spec
from core.queries import Conn, q
from core.settings import Settings

MAX_BATCH = 10_000


@dataclass(frozen=True, kw_only=True)
class CreateResult:
    job_id: str
    status: JobStatus
    created: bool  # False when an idempotency key matched an existing job
    ref: str | None = None


class _RaceLost(Exception):
    """A concurrent create took an idempotency key between lookup and insert: start over."""


def _limits(settings: Settings) -> SpecLimits:
    return SpecLimits(known_job_types=settings.job_types,
                      max_payload_bytes=settings.max_payload_bytes)


def _prefixed(exc: JobHarnessError, index: int) -> JobHarnessError:
    if isinstance(exc, InvalidInput):
        exc.field = f"jobs[{index}].{exc.fields['field']}"
        exc.args = (f"jobs[{index}]: {exc.args[0]}",)
    return exc


def _spec_hash(v: ValidatedSpec) -> str:
    s = v.spec
    parts = [s.job_type, v.payload_json, str(s.priority), str(s.max_retries), str(s.timeout_s),
             s.required_capability or "", ",".join(sorted(s.depends_on))]
    if s.tenant is not None:  # appended only when set: hashes stored before tenants still match
        parts.append(s.tenant)
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


@dataclass
class Plan:
    validated: list[ValidatedSpec]
    ids: list[uuid.UUID]
    internal: dict[int, list[int]]  # spec index -> indexes of batch specs it depends on
    external: dict[int, list[uuid.UUID]]  # spec index -> existing job ids it depends on


def _check_unique(validated: list[ValidatedSpec]) -> dict[str, int]:
    """Refs and idempotency keys must be unique within a batch; returns ref -> index."""
    refs: dict[str, int] = {}
    keys: set[str] = set()
    for i, v in enumerate(validated):
        if v.spec.ref is not None:
            if v.spec.ref in refs:
                raise _prefixed(InvalidInput("ref", f"duplicate ref {v.spec.ref!r}"), i)
            refs[v.spec.ref] = i
        key = v.spec.idempotency_key
        if key is not None:
            if key in keys:
                raise _prefixed(InvalidInput("idempotency_key", f"{key!r} used twice"), i)
            keys.add(key)
    return refs


def _resolve_dependencies(
    validated: list[ValidatedSpec], refs: dict[str, int], single: bool
) -> tuple[dict[int, list[int]], dict[int, list[uuid.UUID]]]:
    """Split each spec's dependencies into batch refs and existing job ids."""
    internal: dict[int, list[int]] = {}
    external: dict[int, list[uuid.UUID]] = {}
    for i, v in enumerate(validated):
        for dep in v.spec.depends_on:
            if dep in refs:
                internal.setdefault(i, []).append(refs[dep])
                continue
            try:
                external.setdefault(i, []).append(uuid.UUID(dep))
            except ValueError:
                err = InvalidInput("depends_on", f"{dep!r} is neither a job id nor a ref here")
                raise (err if single else _prefixed(err, i)) from None
    return internal, external


def _uuid4s(n: int) -> list[uuid.UUID]:
    """n random (version 4) ids from one read of the system's random source."""
    raw = os.urandom(16 * n)
    return [uuid.UUID(bytes=raw[k:k + 16], version=4) for k in range(0, 16 * n, 16)]


def plan_batch(specs: Sequence[Any], settings: Settings, *, single: bool = False) -> Plan:
    """Validate a batch without touching any store."""
    if not isinstance(specs, list | tuple) or not specs:
        raise InvalidInput("jobs", "must be a non-empty list")
    if len(specs) > MAX_BATCH:
        raise InvalidInput("jobs", f"at most {MAX_BATCH} jobs per batch, got {len(specs)}")
    limits = _limits(settings)
    validated: list[ValidatedSpec] = []
    for i, spec in enumerate(specs):
        try:
            validated.append(validate_spec(spec, limits))
        except JobHarnessError as exc:
            raise (exc if single else _prefixed(exc, i)) from None
    refs = _check_unique(validated)
    internal, external = _resolve_dependencies(validated, refs, single)
    names = {i: v.spec.ref or f"jobs[{i}]" for i, v in enumerate(validated)}
    check_acyclic({names[i]: [names[d] for d in deps] for i, deps in internal.items()})
    return Plan(validated=validated, ids=_uuid4s(len(validated)),
                 internal=internal, external=external)


def is_simple(plan: Plan) -> bool:
    """No dependencies and no idempotency keys: the batch is one INSERT statement, atomic on
    its own (no explicit transaction and its two extra round trips), and can be merged with
    other simple batches."""
    return not plan.internal and not plan.external and not any(
        v.spec.idempotency_key for v in plan.validated)


def merge_simple(plans: Sequence[Plan]) -> Plan:
    """One plan for many simple ones (callers batched together), in order."""
    return Plan(validated=[v for p in plans for v in p.validated],
                 ids=[i for p in plans for i in p.ids], internal={}, external={})


async def create_jobs(
    pool: asyncpg.Pool,
    specs: Sequence[Any],
    settings: Settings,
    on_ready: Callable[[Iterable[Any]], None],
    *,
    single: bool = False,
) -> list[CreateResult]:
    """Validate and insert a batch; `on_ready` receives the rows to index for dispatch."""
    return await insert_plan(pool, plan_batch(specs, settings, single=single), on_ready)


async def insert_plan(
    pool: asyncpg.Pool, plan: Plan, on_ready: Callable[[Iterable[Any]], None],
    on_raised: Callable[[Iterable[Any]], None] | None = None,
) -> list[CreateResult]:
    """Insert a validated plan; `on_ready` receives the rows to index for dispatch and
    `on_raised` the jobs whose priority the new jobs raised (priority inheritance)."""
    simple = is_simple(plan)
    for _ in range(3):
        try:
            async with pool.acquire() as conn:
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
    keys = {x.spec.idempotency_key: i for i, x in enumerate(v) if x.spec.idempotency_key}
    if keys:
        for row in await conn.fetch(q("find_idempotent"), list(keys)):
            i = keys[row["idempotency_key"]]
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
    hashes = [_spec_hash(x) if x.spec.idempotency_key else None for x in v]
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
