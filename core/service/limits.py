"""Scheduling limits kept and reported (the values and their validation: `core.jobs.limits`):
per job type and per tenant, how many jobs may run at once (`max_running`) and how many may
start per second (`rate_per_s`, a token bucket of `burst` tokens, one second's worth by
default); per tenant, its weight in the fair share of a priority band (1 by default).

PostgreSQL's `job_limits` table holds them (migration 010). A change is written there, then
mirrored into Redis at once, where the acquire script enforces them atomically for every
worker (core/dispatch/lua/acquire.lua); the reconciler re-mirrors the whole table each pass, so a
change made while Redis was down, or lost with Redis' data, arrives within one pass. While
Redis is down, the PostgreSQL fallback enforces them itself (`JobService._acquire_postgres`).
"""

from __future__ import annotations

import math
from typing import Any

import asyncpg

from core.contract.keys import limit_field
from core.dispatch.index import RedisDispatch
from core.dispatch.records import SchedState
from core.errors import DispatchUnavailable, InvalidInput
from core.jobs.limits import SCOPES, Limit, validate_limit
from core.jobs.model import check_text
from core.store.queries import q, store_errors


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
