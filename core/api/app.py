"""The job service's HTTP API (FastAPI): what Locust drives and what operators call.

Bad input gets a 4xx naming the field and writes nothing; a store outage is a 503; no input
may produce a 500. `/health` reports each store; `/metrics` is Prometheus text.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter, FastAPI, Query, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from core.api.errors import add_error_handlers, error_response
from core.api.metrics import MeasureMiddleware, Metrics, refresh
from core.api.models import BatchIn, CancelIn, CreatedOut, JobIn, LimitIn, PurgeIn
from core.errors import DispatchUnavailable, InvalidInput
from core.infra.auth import TokenGate, auth_headers
from core.jobs.limits import Limit
from core.jobs.model import JobStatus, check_text
from core.memory.events import owner_status, owner_target
from core.service import limits as sched_limits
from core.service.runtime import Runtime, open_runtime
from core.settings import Settings

router = APIRouter()


def _rt(request: Request) -> Runtime:
    return request.app.state.rt  # type: ignore[no-any-return]


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
    app.add_middleware(TokenGate, token=settings.api_token)  # outermost: 401 before anything
    add_error_handlers(app)
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
    check_text("reason", reason)
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
    if body.all and not body.confirm:
        raise InvalidInput("confirm", "all=true deletes every entry for good (they cannot be "
                           "requeued afterwards): send confirm=true")
    older = 0.0 if body.all else float(body.older_than_days or 0) * 86_400
    return {"purged": await _rt(request).service.dlq_purge(older_than_s=older)}


@router.get("/limits")
async def list_limits(request: Request,
                      scope: Literal["job_type", "tenant"] | None = None,
                      after: str | None = Query(None, max_length=220, description=(
                          "the `next` of the previous page")),
                      limit: int = Query(sched_limits.PAGE, ge=1, le=sched_limits.PAGE)) -> Any:
    """Types' and tenants' limits a page at a time in (scope, name) order, with the jobs
    running under each now, how often each held jobs back, tokens now, and whether Redis
    enforces it as stored. `next` names where the following page starts (null: no more)."""
    rt = _rt(request)
    cursor = ("", "")
    if after is not None:
        a_scope, sep, a_name = after.partition(":")
        if not sep or a_scope not in ("job_type", "tenant"):
            raise InvalidInput("after", "must be the `next` of a previous page "
                               f"(\"scope:name\"), got {after!r}")
        cursor = (a_scope, a_name)
    page = await sched_limits.limit_states(rt.pool, rt.dispatch, scope=scope, after=cursor,
                                           size=limit)
    last = page[-1] if len(page) == limit else None
    return {"limits": page, "next": f"{last['scope']}:{last['name']}" if last else None}


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
        return error_response(404, "name", f"no limits set for {scope} {name!r}")
    return {"cleared": {"scope": scope, "name": name}, "enforced": enforced}


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    """Each store's state: ok, degraded (Redis down: dispatch falls back to PostgreSQL) or
    down (PostgreSQL unreachable: 503)."""
    rt = _rt(request)
    out: dict[str, Any] = {"qdrant": await owner_status(rt.dispatch, enabled=rt.memory is not None)}
    t0 = time.perf_counter()
    try:
        await rt.service.check_store()
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


@router.get("/state/{namespace}/{key:path}")
async def state_entry(request: Request,
                      namespace: Literal["job-management", "worker-coordination"],
                      key: str) -> Any:
    """One state-memory entry, read through the memory owner."""
    from urllib.parse import quote

    import httpx

    from core.memory.port import check_key, check_namespace

    check_namespace(namespace)
    check_key(key)
    rt = _rt(request)
    status = await owner_status(rt.dispatch, enabled=rt.memory is not None)
    settings = rt.service.settings
    url = owner_target(status.get("url"), settings.memory_owner_url)
    if url is None:
        why = (f"it advertises {status['url']}, not on this machine: set "
               "JOBHARNESS_MEMORY_OWNER_URL to say where it is") if status.get("url") \
            else f"none ({status['state']})"
        return error_response(503, "memory", f"no memory owner to read from: {why}")
    async with httpx.AsyncClient(timeout=10, headers=auth_headers(settings.api_token)) as http:
        try:
            # the key is one path segment, encoded: "../stats" reads a key, never a route
            r = await http.get(f"{url}/memory/{namespace}/{quote(key, safe='')}")
        except httpx.TransportError as exc:
            return error_response(503, "memory", f"memory owner unreachable: {exc}")
    return JSONResponse(r.json(), r.status_code)


@router.get("/metrics")
async def prometheus(request: Request) -> Response:
    await refresh(request.app.state.metrics, _rt(request))
    return Response(generate_latest(request.app.state.metrics.registry),
                    media_type=CONTENT_TYPE_LATEST)
