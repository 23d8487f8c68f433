"""Scheduling limits kept and reported (the values and their validation: `core.jobs.limits`):
per job type and per tenant, how many jobs may run at once (`max_running`) and how many may
start per second (`rate_per_s`, a token bucket of `burst` tokens, one second's worth by
default); per tenant, its weight in the fair share of a priority band (1 by default).

PostgreSQL's `job_limits` table holds them (migration 010). A change is written there, then
mirrored into Redis at once, where the acquire script enforces them atomically for every
worker (core/dispatch/lua/acquire.lua); the reconciler mirrors the whole table again when its
version (bumped by every change, migration 014) differs from the one Redis holds, so a change
made while Redis was down, or lost with Redis' data, arrives within one pass, and a quiet pass
reads no limit. Listings go a page at a time; /metrics reads the types' first page and the
tenants with jobs running under a limit, never every limit. While
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


PAGE = 1000  # limits per page of GET /limits and `jobharness limits list`


async def limits_page(pool: asyncpg.Pool, *, scope: str | None = None,
                      after: tuple[str, str] = ("", ""), size: int = PAGE) -> list[Limit]:
    """One page of limits in (scope, name) order after `after`."""
    if scope is not None and scope not in SCOPES:
        raise InvalidInput("scope", f"must be one of {', '.join(SCOPES)}, got {scope!r}")
    with store_errors():
        return [_from_row(r) for r in await pool.fetch(q("limits_page"), scope, *after, size)]


async def limit_states(pool: asyncpg.Pool, dispatch: RedisDispatch, *, scope: str | None = None,
                       after: tuple[str, str] = ("", ""), size: int = PAGE,
                       ) -> list[dict[str, Any]]:
    """A page of limits, each with what it governs now: jobs running under it, times it held
    jobs back, tokens now (rate limits), and whether Redis mirrors it as stored. Running
    counts come from PostgreSQL while Redis is unreachable. Reads the page's limits only."""
    return await _states(pool, dispatch,
                         await limits_page(pool, scope=scope, after=after, size=size))


async def busiest_limit_states(pool: asyncpg.Pool, dispatch: RedisDispatch,
                               n: int) -> list[dict[str, Any]]:
    """What /metrics shows: the first `n` types' limits and the `n` tenants with the most jobs
    running under theirs (read from the running counts, whose size is the work running now),
    never every limit."""
    types = await limits_page(pool, scope="job_type", size=n)
    try:
        running = await dispatch.running_counts()
    except DispatchUnavailable:
        with store_errors():
            running = {limit_field(r["scope"], r["name"]): int(r["n"])
                       for r in await pool.fetch(q("running_by_scope"))}
    busy = sorted((f for f in running if f.startswith("tenant\0")),
                  key=lambda f: (-running[f], f))[:n]
    keys = [f.split("\0", 1) for f in busy]
    with store_errors():
        rows = await pool.fetch(q("limits_by_key"), [k[0] for k in keys], [k[1] for k in keys])
    return await _states(pool, dispatch, types + [_from_row(r) for r in rows])


async def _states(pool: asyncpg.Pool, dispatch: RedisDispatch,
                  limits: list[Limit]) -> list[dict[str, Any]]:
    state: SchedState | None
    try:
        state = await dispatch.sched_state_of([lim.field for lim in limits])
    except DispatchUnavailable:
        state = None
    running_pg: dict[str, int] = {}
    if state is None and limits:
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
