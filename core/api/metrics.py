"""What the API's /metrics shows: request counts and latency by route (measured by a pure ASGI
middleware), this process's pool and service counters, and figures read from the stores at
scrape time (shared by every API replica: aggregate those with max(), not sum())."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator
from typing import Any

import asyncpg
from fastapi import HTTPException
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from core.api.errors import MAX_BODY_BYTES, error_response
from core.errors import DispatchUnavailable, StoreUnavailable
from core.memory.events import owner_status
from core.service import limits as sched_limits
from core.service.runtime import Runtime
from core.store.queries import q


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("jobharness_api_requests", "API requests by route and status",
                                ["route", "status"], registry=r)
        self.latency = Histogram("jobharness_api_latency_seconds", "API latency by route",
                                 ["route"], registry=r,
                                 buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5))
        self.jobs = Gauge("jobharness_jobs", "Jobs by status (exact up to "
                          f"{COUNT_CAP:,}, the planner's estimate above)", ["status"],
                          registry=r)
        self.jobs_estimated = Gauge("jobharness_jobs_estimated", "1 when jobharness_jobs of "
                                    "the status is the planner's estimate", ["status"],
                                    registry=r)
        self.queue_depth = Gauge("jobharness_queue_depth", "Redis queue depth", ["queue"],
                                 registry=r)
        self.workers_active = Gauge("jobharness_workers_active", "ACTIVE workers", registry=r)
        self.replacements = Gauge("jobharness_worker_replacements",
                                  "Workers declared FAILED and replaced in the last hour",
                                  registry=r)
        self.heartbeat_timeouts = Gauge("jobharness_heartbeat_timeouts",
                                        "Workers replaced for a stale heartbeat in the last "
                                        "hour", registry=r)
        self.cluster_events = Gauge("jobharness_cluster_events",
                                    "Events counted by every process (e.g. stale_rejected)",
                                    ["event"], registry=r)
        self.memory_owner = Gauge("jobharness_memory_owner",
                                  "State-memory owner: buffered, written, dropped, failures",
                                  ["counter"], registry=r)
        self.memory_up = Gauge("jobharness_memory_up", "1 when the memory owner writes fine",
                               registry=r)
        self.service_events = Gauge("jobharness_service_events",
                                    "This API process's job-service counters", ["event"],
                                    registry=r)
        self.created = Counter("jobharness_jobs_created", "Jobs created through this API "
                               "process", registry=r)
        self.db_query = Histogram("jobharness_db_query_seconds", "PostgreSQL query latency "
                                  "(this API process's pool)", registry=r, buckets=FAST)
        self.redis_op = Histogram("jobharness_redis_op_seconds", "Redis call latency (this "
                                  "API process)", registry=r, buckets=FAST)
        self.store = StoreCollector()
        r.register(self.store)


# Counts a scrape makes stop here (an index-only read of at most this many entries each);
# a larger one is shown as the planner's estimate (statistics, no scan).
COUNT_CAP = 10_000
COUNTED = "executions:"  # cluster counters of how attempts ended (Effects.ended)

FAST = (.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5)


MAX_TENANT_SERIES = 50  # tenants' limits shown one by one in /metrics; the rest summed


class StoreCollector(Collector):
    """Figures read from the stores at scrape time (shared by every API replica: aggregate
    them with max(), not sum())."""

    def __init__(self) -> None:
        self.outcomes: dict[str, int] = {}
        self.extra: dict[str, Any] = {}
        self.pool: dict[str, int] = {}
        self.redis_memory: int | None = None
        self.limits: list[dict[str, Any]] = []

    def collect(self) -> Iterator[Metric]:
        yield from self._limits()
        ex = CounterMetricFamily("jobharness_executions", "Job attempts by how they ended "
                                 "(counted in Redis as they end: a Redis that lost its data "
                                 "starts again from 0, a counter reset)", labels=["status"])
        for status, n in sorted(self.outcomes.items()):
            ex.add_metric([status], float(n))
        yield ex
        if self.extra.get("retries") is not None:
            yield CounterMetricFamily("jobharness_retries", "Retries scheduled (counted in "
                                      "Redis, as the attempts are)",
                                      value=float(self.extra["retries"]))
        gauges = {
            "dlq_size": ("jobharness_dead_letter_jobs", "Jobs in the dead-letter queue (exact "
                         f"up to {COUNT_CAP:,}, the planner's estimate above)"),
            "worker_slots": ("jobharness_worker_slots", "Job slots of ACTIVE workers "
                             "(sum of their concurrency)"),
            "processing": ("jobharness_jobs_processing", "Jobs running now"),
            "lifespan_s": ("jobharness_worker_lifespan_seconds", "Mean lifespan of workers "
                           "stopped in the last hour"),
            "duration_avg_ms": ("jobharness_job_duration_avg_ms", "Mean duration of attempts "
                                "completed in the last 5 minutes (started within the hour)"),
            "duration_p99_ms": ("jobharness_job_duration_p99_ms", "Duration p99 of attempts "
                                "completed in the last 5 minutes (started within the hour)"),
            "queue_wait_avg_s": ("jobharness_queue_wait_avg_seconds", "Mean wait from "
                                 "creation to first start of jobs started in the last 5 "
                                 "minutes"),
        }
        for key, (name, doc) in gauges.items():
            family = GaugeMetricFamily(name, doc)  # declared even while there is no value
            if self.extra.get(key) is not None:
                family.add_metric([], float(self.extra[key]))
            yield family
        pool = GaugeMetricFamily("jobharness_db_pool_connections", "This API process's "
                                 "PostgreSQL pool", labels=["state"])
        for state, n in self.pool.items():
            pool.add_metric([state], float(n))
        yield pool
        if self.redis_memory is not None:
            yield GaugeMetricFamily("jobharness_redis_memory_bytes", "Memory used by Redis",
                                    value=float(self.redis_memory))


    def _limit_rows(self) -> list[dict[str, Any]]:
        """The limits shown one by one: every type's, and the tenants' busiest (running, then
        waits) up to MAX_TENANT_SERIES; the other tenants' limits are summed into one row
        named "(other tenants)", so a scrape stays small whatever the number of tenants."""
        types = [r for r in self.limits if r["scope"] != "tenant"]
        tenants = sorted((r for r in self.limits if r["scope"] == "tenant"),
                         key=lambda r: (-(r.get("running") or 0), -(r.get("waits") or 0),
                                        r["name"]))
        shown, rest = tenants[:MAX_TENANT_SERIES], tenants[MAX_TENANT_SERIES:]
        if not rest:
            return types + shown
        other: dict[str, Any] = {"scope": "tenant", "name": "(other tenants)",
                                 "enforced": all(r["enforced"] for r in rest)}
        for key in ("running", "waits", "tokens", "max_running", "rate_per_s", "burst"):
            values = [r[key] for r in rest if r.get(key) is not None]
            other[key] = sum(values) if values else None
        return types + shown + [other]

    def _limits(self) -> Iterator[Metric]:
        """Every type's and tenant's limits and what they govern now (tenants bounded:
        _limit_rows)."""
        rows = self._limit_rows()
        figures = {
            "max_running": ("jobharness_limit_max_running", "Jobs allowed to run at once"),
            "rate_per_s": ("jobharness_limit_rate_per_second", "Jobs allowed to start per "
                           "second"),
            "burst": ("jobharness_limit_burst", "Starts a rate limit lets accumulate"),
            "weight": ("jobharness_limit_weight", "Tenant's weight in the fair share of a "
                       "band"),
            "running": ("jobharness_limit_running", "Jobs running under the limit now"),
            "tokens": ("jobharness_limit_tokens", "Rate-limit tokens available now"),
        }
        for key, (name, doc) in figures.items():
            family = GaugeMetricFamily(name, doc, labels=["scope", "name"])
            for row in rows:
                if row.get(key) is not None:
                    family.add_metric([row["scope"], row["name"]], float(row[key]))
            yield family
        waits = CounterMetricFamily("jobharness_limit_waits", "Acquisitions that passed over "
                                    "jobs this limit held back", labels=["scope", "name"])
        enforced = GaugeMetricFamily("jobharness_limit_enforced", "1 when Redis enforces the "
                                     "limit as stored", labels=["scope", "name"])
        for row in rows:
            if row.get("waits") is not None:
                waits.add_metric([row["scope"], row["name"]], float(row["waits"]))
            enforced.add_metric([row["scope"], row["name"]], 1.0 if row["enforced"] else 0.0)
        yield waits
        yield enforced


async def refresh(metrics: Metrics, rt: Runtime) -> None:
    """Read what a scrape shows from the stores and this process; a store that cannot be
    read leaves its figures as they were."""
    with contextlib.suppress(StoreUnavailable, OSError, asyncpg.PostgresError):
        await read_postgres(metrics, rt)
    metrics.store.pool = {"max": rt.pool.get_max_size(), "open": rt.pool.get_size(),
                          "idle": rt.pool.get_idle_size(),
                          "used": rt.pool.get_size() - rt.pool.get_idle_size()}
    with contextlib.suppress(StoreUnavailable, OSError, asyncpg.PostgresError):
        metrics.store.limits = await sched_limits.busiest_limit_states(
            rt.pool, rt.dispatch, MAX_TENANT_SERIES)
    with contextlib.suppress(DispatchUnavailable):
        for name, depth in (await rt.dispatch.depths()).items():
            metrics.queue_depth.labels(name).set(depth)
        metrics.store.redis_memory = await rt.dispatch.memory_bytes()
    for event, n in rt.service.stats.items():
        metrics.service_events.labels(event).set(n)
    if rt.memory is not None:
        for event, n in rt.memory.stats.items():
            metrics.service_events.labels(event).set(n)
        owner = await owner_status(rt.dispatch, enabled=rt.memory is not None)
        for name in ("buffered", "memory_written", "memory_dropped", "memory_write_failures"):
            if isinstance(owner.get(name), int):
                metrics.memory_owner.labels(name).set(owner[name])
        metrics.memory_up.set(1 if owner.get("state") == "up" else 0)
    with contextlib.suppress(DispatchUnavailable):
        counts = await rt.dispatch.event_counts()
        metrics.store.outcomes = {k.removeprefix(COUNTED): n for k, n in counts.items()
                                  if k.startswith(COUNTED)}
        metrics.store.extra["retries"] = counts.get("retries", 0)
        for event, n in counts.items():
            if not event.startswith(COUNTED) and event != "retries":
                metrics.cluster_events.labels(event).set(n)


async def read_postgres(metrics: Metrics, rt: Runtime) -> None:
    """Jobs by status, workers, and the rest of the store figures: each read bounded (counts
    stop at COUNT_CAP, windows on indexed times)."""
    rows = await rt.pool.fetch(q("metrics_job_counts"), COUNT_CAP)
    for row in rows:
        n, estimated = int(row["n"]), False
        if n >= COUNT_CAP:
            n, estimated = await _estimate(rt, f"jobs WHERE status = '{row['status']}'"), True
        metrics.jobs.labels(row["status"]).set(n)
        metrics.jobs_estimated.labels(row["status"]).set(int(estimated))
    w = await rt.pool.fetchrow(q("metrics_workers"))
    if w is not None:
        metrics.workers_active.set(w["active"])
        metrics.replacements.set(w["replaced"])
        metrics.heartbeat_timeouts.set(w["heartbeat_timeouts"])
    extra = dict(await rt.pool.fetchrow(q("metrics_extra"), COUNT_CAP) or {})
    if (extra.get("dlq_size") or 0) >= COUNT_CAP:
        extra["dlq_size"] = await _estimate(rt, "dead_letter_queue WHERE requeued_at IS NULL")
    metrics.store.extra = {**extra, "lifespan_s": w["lifespan_s"] if w else None,
                           "retries": metrics.store.extra.get("retries")}


async def _estimate(rt: Runtime, relation_where: str) -> int:
    """The planner's row estimate for `SELECT 1 FROM <relation_where>` (statistics, no scan);
    the text is the caller's own constant, never input."""
    plan = await rt.pool.fetchval(f"EXPLAIN (FORMAT JSON) SELECT 1 FROM {relation_where}")
    return int((json.loads(plan) if isinstance(plan, str) else plan)[0]["Plan"]["Plan Rows"])


BODY_READ_TIMEOUT_S = 30.0  # between two parts of a body: a client that stalls is dropped


class _BodyTooLarge(HTTPException):
    """Raised from `receive`: the framework answers it (413) wherever the body is read."""

    def __init__(self) -> None:
        super().__init__(413, [{"loc": ["body", "body"],
                                "msg": f"larger than {MAX_BODY_BYTES} bytes"}])


class _BodyTooSlow(HTTPException):
    def __init__(self) -> None:
        super().__init__(408, [{"loc": ["body", "body"],
                                "msg": f"no part of the body for {BODY_READ_TIMEOUT_S:g} s"}])




class MeasureMiddleware:
    """Pure ASGI middleware (cheaper than BaseHTTPMiddleware): refuses oversized bodies (by
    their declared length at once, and while they stream, chunked ones included), drops a
    body that stalls, and records each request's latency and status by route template."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > MAX_BODY_BYTES:
                await error_response(413, "body", f"larger than {MAX_BODY_BYTES} bytes")(
                    scope, receive, send)
                return
        status = [500]
        started = [False]
        received = [0]

        async def send_wrapper(message: Any) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                started[0] = True
            await send(message)

        async def limited_receive() -> Any:
            try:  # a timer handle, not a task per message (this is every request's path)
                async with asyncio.timeout(BODY_READ_TIMEOUT_S):
                    message = await receive()
            except TimeoutError:
                raise _BodyTooSlow() from None
            if message["type"] == "http.request":
                received[0] += len(message.get("body", b""))
                if received[0] > MAX_BODY_BYTES:
                    raise _BodyTooLarge()
            return message

        t0 = time.perf_counter()
        try:
            await self.app(scope, limited_receive, send_wrapper)
        except (_BodyTooLarge, _BodyTooSlow) as exc:  # read outside the framework's handlers
            if not started[0]:
                await JSONResponse({"detail": exc.detail}, exc.status_code)(
                    scope, receive, send_wrapper)
        finally:
            name = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.latency.labels(name).observe(time.perf_counter() - t0)
            self.metrics.requests.labels(name, str(status[0])).inc()
