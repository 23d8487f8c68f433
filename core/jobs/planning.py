"""Planning a create, before anything is written: every spec validated, batch refs resolved,
the dependency graph checked for cycles, ids drawn. Pure: `core.store.inserts` writes a plan
in one transaction (invariant 7: nothing is written unless every spec is valid).
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from core.errors import InvalidInput, JobHarnessError
from core.jobs.depgraph import check_acyclic
from core.jobs.model import JobStatus, SpecLimits, ValidatedSpec, validate_spec

MAX_BATCH = 10_000


@dataclass(frozen=True, kw_only=True)
class CreateResult:
    job_id: str
    status: JobStatus
    created: bool  # False when an idempotency key matched an existing job
    ref: str | None = None


def _prefixed(exc: JobHarnessError, index: int) -> JobHarnessError:
    if isinstance(exc, InvalidInput):
        exc.field = f"jobs[{index}].{exc.fields['field']}"
        exc.args = (f"jobs[{index}]: {exc.args[0]}",)
    return exc


def spec_hash(v: ValidatedSpec) -> str:
    """What an idempotency key must match: the spec's fields, hashed."""
    s = v.spec
    parts = [s.job_type, v.payload_json, str(s.priority), str(s.max_retries), str(s.timeout_s),
             s.required_capability or "", ",".join(sorted(s.depends_on))]
    if s.tenant is not None:  # appended only when set: hashes stored before tenants still match
        parts.append(s.tenant)
    # when the job may start changes the job too (appended only when set, as above)
    if s.run_at is not None:
        parts.append(f"run_at={s.run_at.isoformat()}")
    if s.delay_s:
        parts.append(f"delay_s={float(s.delay_s)!r}")
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
    keys: set[tuple[str, str]] = set()  # (tenant, key): keys are a tenant's own
    for i, v in enumerate(validated):
        if v.spec.ref is not None:
            if v.spec.ref in refs:
                raise _prefixed(InvalidInput("ref", f"duplicate ref {v.spec.ref!r}"), i)
            refs[v.spec.ref] = i
        key = v.spec.idempotency_key
        if key is not None:
            scoped = (v.spec.tenant or "", key)
            if scoped in keys:
                raise _prefixed(InvalidInput("idempotency_key", f"{key!r} used twice"), i)
            keys.add(scoped)
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


def _uuid7s(n: int) -> list[uuid.UUID]:
    """n time-ordered ids (UUID version 7, RFC 9562): the creation's Unix time in ms, then a
    counter of the job's place in its batch (26 bits, the RFC's method 1), then 48 random bits
    from one read of the system's random source. Ids sort in creation order, so jobs of equal
    priority that Redis scores in the same millisecond (a write-behind batch indexes creates
    made milliseconds apart together) tie in the order they were created, not at random."""
    ms = time.time_ns() // 1_000_000
    raw = os.urandom(6 * n)
    ids = []
    for k in range(n):
        rand_a, rand_b_high = k >> 14, k & 0x3FFF  # 12 + 14 bits of counter
        value = ((ms & 0xFFFF_FFFF_FFFF) << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << 62
                 | rand_b_high << 48 | int.from_bytes(raw[6 * k:6 * k + 6], "big"))
        ids.append(uuid.UUID(int=value))
    return ids


def plan_batch(specs: Sequence[Any], limits: SpecLimits, *, single: bool = False) -> Plan:
    """Validate a batch without touching any store."""
    if not isinstance(specs, list | tuple) or not specs:
        raise InvalidInput("jobs", "must be a non-empty list")
    if len(specs) > MAX_BATCH:
        raise InvalidInput("jobs", f"at most {MAX_BATCH} jobs per batch, got {len(specs)}")
    if len(specs) == 1:  # one job: nothing to check against another (the common create)
        try:
            one = validate_spec(specs[0], limits)
        except JobHarnessError as exc:
            raise (exc if single else _prefixed(exc, 0)) from None
        if not one.spec.depends_on:
            return Plan(validated=[one], ids=_uuid7s(1), internal={}, external={})
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
    return Plan(validated=validated, ids=_uuid7s(len(validated)),
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


