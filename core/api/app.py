"""The job service's HTTP API (FastAPI): what Locust drives and what operators call.

Bad input gets a 4xx naming the field and writes nothing; a store outage is a 503; no input
may produce a 500. `/health` reports each store; `/metrics` is Prometheus text.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Literal

import asyncpg
from fastapi import APIRouter, FastAPI, Query, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from core.api.models import BatchIn, CancelIn, CreatedOut, JobIn, LimitIn, PurgeIn
from core.errors import (
    DispatchUnavailable,
    InvalidInput,
    InvalidTransition,
    JobNotFound,
    StaleLease,
    StoreUnavailable,
)
from core.jobs.limits import Limit
from core.jobs.model import JobStatus
from core.service import limits as sched_limits
from core.service.runtime import Runtime, open_runtime
from core.settings import Settings
from core.store.queries import q

MAX_BODY_BYTES = 64 * 1024 * 1024


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("jobharness_api_requests", "API requests by route and status",
                                ["route", "status"], registry=r)
        self.latency = Histogram("jobharness_api_latency_seconds", "API latency by route",
                                 ["route"], registry=r,
                                 buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5))
        self.jobs = Gauge("jobharness_jobs", "Jobs by type and status", ["job_type", "status"],
                          registry=r)
        self.queue_depth = Gauge("jobharness_queue_depth", "Redis queue depth", ["queue"],
                                 registry=r)
        self.workers_active = Gauge("jobharness_workers_active", "ACTIVE workers", registry=r)
        self.replacements = Gauge("jobharness_worker_replacements",
                                  "Workers declared FAILED and replaced", registry=r)
        self.heartbeat_timeouts = Gauge("jobharness_heartbeat_timeouts",
                                        "Workers replaced for a stale heartbeat", registry=r)
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


FAST = (.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5)


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
        ex = CounterMetricFamily("jobharness_executions", "Job attempts by how they ended",
                                 labels=["status"])
        for status, n in sorted(self.outcomes.items()):
            ex.add_metric([status], float(n))
        yield ex
        if self.extra.get("retries") is not None:
            yield CounterMetricFamily("jobharness_retries", "Retries (attempts after a job's "
                                      "first), summed over jobs",
                                      value=float(self.extra["retries"]))
        gauges = {
            "dlq_size": ("jobharness_dead_letter_jobs", "Jobs in the dead-letter queue"),
            "worker_slots": ("jobharness_worker_slots", "Job slots of ACTIVE workers "
                             "(sum of their concurrency)"),
            "processing": ("jobharness_jobs_processing", "Jobs running now"),
            "lifespan_s": ("jobharness_worker_lifespan_seconds", "Mean lifespan of workers "
                           "stopped in the last hour"),
            "duration_avg_ms": ("jobharness_job_duration_avg_ms", "Mean duration of attempts "
                                "completed in the last 5 minutes"),
            "duration_p99_ms": ("jobharness_job_duration_p99_ms", "Duration p99 of attempts "
                                "completed in the last 5 minutes"),
            "queue_wait_avg_s": ("jobharness_queue_wait_avg_seconds", "Mean wait from "
                                 "creation to start of jobs started in the last 5 minutes"),
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


    def _limits(self) -> Iterator[Metric]:
        """Every type's and tenant's limits and what they govern now."""
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
            for row in self.limits:
                if row.get(key) is not None:
                    family.add_metric([row["scope"], row["name"]], float(row[key]))
            yield family
        waits = CounterMetricFamily("jobharness_limit_waits", "Acquisitions that passed over "
                                    "jobs this limit held back", labels=["scope", "name"])
        enforced = GaugeMetricFamily("jobharness_limit_enforced", "1 when Redis enforces the "
                                     "limit as stored", labels=["scope", "name"])
        for row in self.limits:
            if row.get("waits") is not None:
                waits.add_metric([row["scope"], row["name"]], float(row["waits"]))
            enforced.add_metric([row["scope"], row["name"]], 1.0 if row["enforced"] else 0.0)
        yield waits
        yield enforced


def _error(status: int, field: str, message: str) -> JSONResponse:
    where = "path" if field == "job_id" else "body"
    return JSONResponse({"detail": [{"loc": [where, field], "msg": message}]}, status)


router = APIRouter()


class MeasureMiddleware:
    """Pure ASGI middleware (cheaper than BaseHTTPMiddleware): refuses oversized bodies and
    records each request's latency and status by route template."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > MAX_BODY_BYTES:
                await _error(413, "body", f"larger than {MAX_BODY_BYTES} bytes")(
                    scope, receive, send)
                return
        status = [500]

        async def send_wrapper(message: Any) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        t0 = time.perf_counter()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            name = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.latency.labels(name).observe(time.perf_counter() - t0)
            self.metrics.requests.labels(name, str(status[0])).inc()


def _rt(request: Request) -> Runtime:
    return request.app.state.rt  # type: ignore[no-any-return]


def _add_error_handlers(app: FastAPI) -> None:
    """Typed refusals of the core become 4xx naming the field; outages become 503."""
    statuses: list[tuple[type[Exception], int, Callable[[Any], str]]] = [
        (InvalidInput, 422, lambda e: e.field),
        (JobNotFound, 404, lambda e: "job_id"),
        (InvalidTransition, 409, lambda e: "status"),
        (StaleLease, 409, lambda e: "token"),
        (StoreUnavailable, 503, lambda e: "store"),
    ]
    async def data_error(request: Request, exc: Exception) -> JSONResponse:
        # A value PostgreSQL cannot store that validation let through: still the input's
        # fault, and the failed statement wrote nothing.
        return _error(422, "input", f"invalid input: {exc}")

    app.add_exception_handler(asyncpg.DataError, data_error)
    for exc_type, status, field in statuses:
        def handler(request: Request, exc: Exception, status: int = status,
                    field: Callable[[Any], str] = field) -> JSONResponse:
            return _error(status, field(exc), str(exc))

        app.add_exception_handler(exc_type, handler)


def create_app(settings: Settings, *, pool_size: int = 10) -> FastAPI:
    """The API over the given (resolved) settings; the runtime opens with the app."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with open_runtime(settings, pool_size=pool_size, redis_connections=pool_size,
                                observe_query=metrics.db_query.observe) as rt:
            rt.dispatch.observe = metrics.redis_op.observe
            app.state.rt = rt
            yield

    app = FastAPI(title="jobharness job service", version="0.1.0", lifespan=lifespan)
    app.state.metrics = metrics = Metrics()

    app.add_middleware(MeasureMiddleware, metrics=metrics)
    _add_error_handlers(app)
    app.include_router(router)
    return app


@router.post("/jobs", status_code=201, response_model=None,
             responses={201: {"model": CreatedOut, "description": "Created"}})
async def create_job(request: Request, job: JobIn) -> Response:
    # the hot path: the response is built here from the core's typed result, skipping the
    # framework's response-model validation and encoding (a fifth of a create's CPU)
    r = await _rt(request).service.create(job.to_spec())
    request.app.state.metrics.created.inc()
    out = CreatedOut(job_id=r.job_id, status=r.status.value, created=r.created, ref=r.ref)
    return Response(out.model_dump_json(), status_code=201, media_type="application/json")


@router.post("/jobs/batch", status_code=201, response_model=list[CreatedOut])
async def create_batch(request: Request, batch: BatchIn) -> Any:
    results = await _rt(request).service.create_batch([j.to_spec() for j in batch.jobs])
    request.app.state.metrics.created.inc(sum(r.created for r in results))
    return [dataclasses.asdict(r) for r in results]


@router.get("/jobs/{job_id}")
async def get_job(request: Request, job_id: str) -> Any:
    svc = _rt(request).service
    job = await svc.get(job_id)
    return {**dataclasses.asdict(job), "executions": await svc.executions(job_id)}


@router.get("/jobs")
async def list_jobs(request: Request, status: JobStatus | None = None,
                    job_type: str | None = None, limit: int = Query(50, ge=1, le=1000),
                    offset: int = Query(0, ge=0, le=10_000_000)) -> Any:
    return await _rt(request).service.list_jobs(
        status=status.value if status else None, job_type=job_type, limit=limit, offset=offset)


@router.post("/jobs/{job_id}/cancel")
async def cancel_job(request: Request, job_id: str, body: CancelIn | None = None) -> Any:
    reason = body.reason if body else "cancelled through the API"
    return {"job_id": job_id, "status": await _rt(request).service.cancel(job_id, reason)}


@router.get("/queues")
async def queues(request: Request) -> Any:
    rt = _rt(request)
    try:
        depths: dict[str, int] | None = await rt.dispatch.depths()
    except DispatchUnavailable:
        depths = None
    return {"redis": depths, "postgres": await rt.service.counts()}


@router.get("/workers")
async def workers(request: Request, status: str | None = Query(None, pattern="^[A-Z]{1,20}$"),
                  limit: int = Query(200, ge=1, le=10_000)) -> Any:
    return await _rt(request).service.list_workers(status=status, limit=limit)


@router.get("/dlq")
async def dlq(request: Request, job_type: str | None = None,
              limit: int = Query(100, ge=1, le=10_000),
              offset: int = Query(0, ge=0, le=10_000_000)) -> Any:
    return await _rt(request).service.dlq_list(job_type=job_type, limit=limit, offset=offset)


@router.post("/dlq/{job_id}/requeue")
async def dlq_requeue(request: Request, job_id: str) -> Any:
    await _rt(request).service.dlq_requeue(job_id)
    return {"job_id": job_id, "status": "PENDING"}


@router.post("/dlq/purge")
async def dlq_purge(request: Request, body: PurgeIn) -> Any:
    if body.all == (body.older_than_days is not None):
        raise InvalidInput("older_than_days", "give either older_than_days or all=true")
    older = 0.0 if body.all else float(body.older_than_days or 0) * 86_400
    return {"purged": await _rt(request).service.dlq_purge(older_than_s=older)}


@router.get("/limits")
async def list_limits(request: Request) -> Any:
    """Every type's and tenant's limits, with the jobs running under each now, how often each
    held jobs back, tokens now, and whether Redis enforces it as stored."""
    rt = _rt(request)
    return {"limits": await sched_limits.limit_states(rt.pool, rt.dispatch)}


@router.put("/limits/{scope}/{name:path}")
async def set_limit(request: Request, scope: Literal["job_type", "tenant"], name: str,
                    body: LimitIn) -> Any:
    """Set (replace) one type's or tenant's limits; they apply to the next acquisition."""
    rt = _rt(request)
    limit, enforced = await sched_limits.set_limit(
        rt.pool, rt.dispatch, Limit(scope=scope, name=name, **body.model_dump()),
        rt.settings.job_types)
    return {"limit": limit.as_dict(), "enforced": enforced}


@router.delete("/limits/{scope}/{name:path}")
async def clear_limit(request: Request, scope: Literal["job_type", "tenant"],
                      name: str) -> Any:
    rt = _rt(request)
    found, enforced = await sched_limits.clear_limit(rt.pool, rt.dispatch, scope, name)
    if not found:
        return _error(404, "name", f"no limits set for {scope} {name!r}")
    return {"cleared": {"scope": scope, "name": name}, "enforced": enforced}


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    """Each store's state: ok, degraded (Redis down: dispatch falls back to PostgreSQL) or
    down (PostgreSQL unreachable: 503)."""
    rt = _rt(request)
    out: dict[str, Any] = {"qdrant": await _memory_status(rt)}
    t0 = time.perf_counter()
    try:
        await rt.pool.fetchval("SELECT 1")
        out["postgres"] = {"state": "up",
                           "latency_ms": round((time.perf_counter() - t0) * 1000, 2)}
    except Exception as exc:  # a health probe reports failures, it does not raise them
        out["postgres"] = {"state": "down", "error": str(exc)[:200]}
    rt.dispatch.reset_breaker()
    out["redis"] = {"state": "up" if await rt.dispatch.ping() else "down"}
    pg_up = out["postgres"]["state"] == "up"
    degraded = out["redis"]["state"] != "up" or out["qdrant"]["state"] == "down"
    out["status"] = "down" if not pg_up else ("degraded" if degraded else "ok")
    out["events"] = dict(rt.service.stats) | (dict(rt.memory.stats) if rt.memory else {})
    return JSONResponse(out, 200 if pg_up else 503)


async def _memory_status(rt: Runtime) -> dict[str, Any]:
    """The memory owner's published status: up, down (Qdrant failing: events buffered, then
    dropped), "no owner" (nothing consumes the events), or "off"."""
    if rt.memory is None:
        return {"state": "off"}
    try:
        raw = await rt.dispatch.client.hgetall(rt.dispatch.keys.memory_owner)
    except Exception:  # Redis down: the owner's status cannot be read
        return {"state": "unknown"}
    if not raw:
        return {"state": "no owner"}
    return {str(k): (int(v) if str(v).isdigit() else str(v)) for k, v in raw.items()}


@router.get("/state/{namespace}/{key:path}")
async def state_entry(request: Request,
                      namespace: Literal["job-management", "worker-coordination"],
                      key: str) -> Any:
    """One state-memory entry, read through the memory owner."""
    import httpx

    from core.memory.port import check_key, check_namespace

    check_namespace(namespace)
    check_key(key)
    status = await _memory_status(_rt(request))
    if not status.get("url"):
        return _error(503, "memory", f"no memory owner to read from ({status['state']})")
    async with httpx.AsyncClient(timeout=10) as http:
        try:
            r = await http.get(f"{status['url']}/memory/{namespace}/{key}")
        except httpx.TransportError as exc:
            return _error(503, "memory", f"memory owner unreachable: {exc}")
    return JSONResponse(r.json(), r.status_code)


@router.get("/metrics")
async def prometheus(request: Request) -> Response:
    rt, metrics = _rt(request), request.app.state.metrics
    with contextlib.suppress(StoreUnavailable, OSError):
        rows = await rt.pool.fetch(q("metrics_jobs"))
        metrics.jobs.clear()  # a (type, status) with no jobs left must not keep its last count
        for row in rows:
            metrics.jobs.labels(row["job_type"], row["status"]).set(row["n"])
        w = await rt.pool.fetchrow(q("metrics_workers"))
        if w is not None:
            metrics.workers_active.set(w["active"])
            metrics.replacements.set(w["replaced"])
            metrics.heartbeat_timeouts.set(w["heartbeat_timeouts"])
    with contextlib.suppress(StoreUnavailable, OSError, asyncpg.PostgresError):
        metrics.store.outcomes = {r["status"]: int(r["n"])
                                  for r in await rt.pool.fetch(q("metrics_outcomes"))}
        metrics.store.extra = dict(await rt.pool.fetchrow(q("metrics_extra")) or {})
    metrics.store.pool = {"max": rt.pool.get_max_size(), "open": rt.pool.get_size(),
                          "idle": rt.pool.get_idle_size(),
                          "used": rt.pool.get_size() - rt.pool.get_idle_size()}
    with contextlib.suppress(StoreUnavailable, OSError, asyncpg.PostgresError):
        metrics.store.limits = await sched_limits.limit_states(rt.pool, rt.dispatch)
    with contextlib.suppress(DispatchUnavailable):
        for name, depth in (await rt.dispatch.depths()).items():
            metrics.queue_depth.labels(name).set(depth)
        metrics.store.redis_memory = await rt.dispatch.memory_bytes()
    for event, n in rt.service.stats.items():
        metrics.service_events.labels(event).set(n)
    if rt.memory is not None:
        for event, n in rt.memory.stats.items():
            metrics.service_events.labels(event).set(n)
        owner = await _memory_status(rt)
        for name in ("buffered", "memory_written", "memory_dropped", "memory_write_failures"):
            if isinstance(owner.get(name), int):
                metrics.memory_owner.labels(name).set(owner[name])
        metrics.memory_up.set(1 if owner.get("state") == "up" else 0)
    with contextlib.suppress(DispatchUnavailable):
        for event, n in (await rt.dispatch.event_counts()).items():
            metrics.cluster_events.labels(event).set(n)
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
