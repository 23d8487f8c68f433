"""Scheduling limits: per job type and per tenant, how many jobs may run at once
(`max_running`) and how many may start per second (`rate_per_s`, a token bucket of `burst`
tokens, one second's worth by default); per tenant, its weight in the fair share of a priority
band (1 by default).

PostgreSQL's `job_limits` table holds them (migration 010). A change is written there, then
mirrored into Redis at once, where the acquire script enforces them atomically for every
worker (core/lua/acquire.lua); the reconciler re-mirrors the whole table each pass, so a
change made while Redis was down, or lost with Redis' data, arrives within one pass. While
Redis is down, the PostgreSQL fallback enforces them itself (`JobService._acquire_postgres`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import asyncpg

from core.dispatch import RedisDispatch, SchedState, limit_field
from core.errors import DispatchUnavailable, InvalidInput
from core.model import check_text
from core.queries import q, store_errors

SCOPES = ("job_type", "tenant")
MAX_RUNNING_LIMIT = 1_000_000
MAX_RATE = 1_000_000.0
MAX_WEIGHT = 1000


@dataclass(frozen=True, kw_only=True)
class Limit:
    scope: str  # "job_type" or "tenant"
    name: str
    max_running: int | None = None
    rate_per_s: float | None = None
    burst: int | None = None  # tokens a rate limit may save up; None: max(1, rate)
    weight: int | None = None  # tenants only: share of a band, relative to other tenants

    @property
    def field(self) -> str:
        return limit_field(self.scope, self.name)

    @property
    def mirror(self) -> str:
        """The value the dispatch scripts read: "max,rate,burst,weight", empty when unset."""
        parts = (self.max_running, self.rate_per_s, self.burst, self.weight)
        return ",".join("" if v is None else repr(v) for v in parts)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _positive_int(field: str, value: Any, high: int) -> None:
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high
    ):
        raise InvalidInput(field, f"must be an integer from 1 to {high} or null, got {value!r}")


def validate_limit(limit: Limit, known_job_types: frozenset[str]) -> Limit:
    """Check every field; raise an error naming the first bad one."""
    if limit.scope not in SCOPES:
        raise InvalidInput("scope", f"must be one of {', '.join(SCOPES)}, got {limit.scope!r}")
    if not isinstance(limit.name, str) or not 0 < len(limit.name) <= 200:
        raise InvalidInput("name", "must be a string of 1 to 200 characters")
    check_text("name", limit.name)
    if limit.scope == "job_type" and limit.name not in known_job_types:
        raise InvalidInput("name", f"unknown job type {limit.name!r} "
                                   f"(known: {', '.join(sorted(known_job_types))})")
    _positive_int("max_running", limit.max_running, MAX_RUNNING_LIMIT)
    rate = limit.rate_per_s
    if rate is not None and (
        isinstance(rate, bool) or not isinstance(rate, int | float) or not math.isfinite(rate)
        or not 0 < rate <= MAX_RATE
    ):
        raise InvalidInput("rate_per_s", f"must be a number above 0 and at most {MAX_RATE:g} "
                                         f"(jobs started per second) or null, got {rate!r}")
    _positive_int("burst", limit.burst, MAX_RUNNING_LIMIT)
    if limit.burst is not None and rate is None:
        raise InvalidInput("burst", "applies to a rate limit: give rate_per_s too")
    _positive_int("weight", limit.weight, MAX_WEIGHT)
    if limit.weight is not None and limit.scope != "tenant":
        raise InvalidInput("weight", "only tenants have a fair-share weight")
    if limit.max_running is None and rate is None and limit.weight is None:
        raise InvalidInput("limit", "sets nothing: give max_running, rate_per_s or weight "
                                    "(or clear the limit)")
    return Limit(scope=limit.scope, name=limit.name, max_running=limit.max_running,
                 rate_per_s=None if rate is None else float(rate), burst=limit.burst,
                 weight=limit.weight)


def _from_row(row: asyncpg.Record) -> Limit:
    return Limit(scope=row["scope"], name=row["name"], max_running=row["max_running"],
                 rate_per_s=row["rate_per_s"], burst=row["burst"], weight=row["weight"])


async def list_limits(pool: asyncpg.Pool) -> list[Limit]:
    with store_errors():
        return [_from_row(r) for r in await pool.fetch(q("list_limits"))]


async def _mirror(dispatch: RedisDispatch, field: str, value: str | None) -> bool:
    """True when Redis took the change now (else the reconciler brings it)."""
    try:
        await dispatch.set_limit(field, value)
    except DispatchUnavailable:
        return False
    return True


async def set_limit(
    pool: asyncpg.Pool, dispatch: RedisDispatch, limit: Limit, known_job_types: frozenset[str]
) -> tuple[Limit, bool]:
    """Set (replace) the limits of one type or tenant. Returns the stored limit and whether
    Redis enforces it already."""
    limit = validate_limit(limit, known_job_types)
    with store_errors():
        await pool.execute(q("set_limit"), limit.scope, limit.name, limit.max_running,
                           limit.rate_per_s, limit.burst, limit.weight)
    return limit, await _mirror(dispatch, limit.field, limit.mirror)


async def clear_limit(
    pool: asyncpg.Pool, dispatch: RedisDispatch, scope: str, name: str
) -> tuple[bool, bool]:
    """Remove a type's or tenant's limits. Returns (whether there were any, whether Redis
    dropped them already)."""
    if scope not in SCOPES:
        raise InvalidInput("scope", f"must be one of {', '.join(SCOPES)}, got {scope!r}")
    check_text("name", name)
    with store_errors():
        found = await pool.fetchval(q("clear_limit"), scope, name)
    return bool(found), await _mirror(dispatch, limit_field(scope, name), None)


def _tokens_now(lim: Limit, state: SchedState) -> float | None:
    """A rate limit's tokens now: as left by the last start, refilled since (as the acquire
    script computes them); a bucket no start has touched is full."""
    if lim.rate_per_s is None:
        return None
    burst = lim.burst or max(1, math.floor(lim.rate_per_s))
    tokens, last_ms = state.buckets.get(lim.field, (float(burst), state.now_ms))
    refill = max(0, state.now_ms - last_ms) * lim.rate_per_s / 1000
    return round(min(float(burst), tokens + refill), 3)


def mirror_of(limits: list[Limit]) -> dict[str, str]:
    return {lim.field: lim.mirror for lim in limits}


async def limit_states(pool: asyncpg.Pool, dispatch: RedisDispatch) -> list[dict[str, Any]]:
    """Each limit with what it governs now: jobs running under it, times it held jobs back,
    tokens now (rate limits), and whether Redis mirrors it as stored. Running counts come
    from PostgreSQL while Redis is unreachable."""
    limits = await list_limits(pool)
    state: SchedState | None
    try:
        state = await dispatch.sched_state()
    except DispatchUnavailable:
        state = None
    running_pg: dict[str, int] = {}
    if state is None:
        with store_errors():
            for r in await pool.fetch(q("running_by_scope")):
                running_pg[limit_field(r["scope"], r["name"])] = int(r["n"])
    out = []
    for lim in limits:
        row = lim.as_dict()
        if state is not None:
            row["running"] = state.running.get(lim.field, 0)
            row["waits"] = state.waits.get(lim.field, 0)
            row["tokens"] = _tokens_now(lim, state)
            row["enforced"] = state.limits.get(lim.field) == lim.mirror
        else:
            row.update(running=running_pg.get(lim.field, 0), waits=None, tokens=None,
                       enforced=False)
        out.append(row)
    return out
