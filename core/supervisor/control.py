"""The supervisor's control surface: a small HTTP API on 127.0.0.1 (or a chosen address) to
list workers and kill, pause, resume or terminate given ones. Chaos drills use it locally and
against staging supervisors; its URL is written to a state file next to the data folder.

    GET  /workers                       the slots and their processes
    GET  /stats                         counters and the replacement journal
    GET  /metrics                       the same counters for Prometheus
    POST /workers/{id}/{action}         action: kill | pause | resume | terminate
    POST /workers/{id}/degrade {"mode": "leak"|"slow"|"stall", "ramp_s": S, ...}
                                        start a gradual fault (core.worker.faults)
    POST /kill   {"count": N} or {"fraction": F, "seed": S}   SIGKILL random workers
"""

from __future__ import annotations

import json
import random
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from core.contract import runfolder
from core.infra.auth import auth_headers
from core.supervisor.supervisor import Supervisor
from core.worker.faults import FaultSpec

ACTIONS = ("kill", "pause", "resume", "terminate")


async def _degrade(sup: Supervisor, request: Request, wid: str) -> JSONResponse:
    try:
        body = json.loads(await request.body() or b"{}")
        if not isinstance(body, dict):
            raise ValueError("the body must be a JSON object")
        spec = FaultSpec.from_dict(body)
    except (ValueError, TypeError) as exc:
        return JSONResponse({"error": f"bad fault: {exc}"}, 400)
    try:
        pid = sup.inject_fault(wid, spec)
    except LookupError as exc:
        return JSONResponse({"error": str(exc)}, 404)
    return JSONResponse({"worker_id": wid, "action": "degrade", "pid": pid,
                         "fault": spec.as_dict()})


class SupervisorCollector(Collector):
    """The supervisor's counters and its workers by state, read at scrape time."""

    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup

    def collect(self) -> Iterator[Metric]:
        events = CounterMetricFamily("jobharness_supervisor_events",
                                     "Supervisor events: replacements (reactive and proactive), "
                                     "process deaths, heartbeat timeouts, predictor verdicts",
                                     labels=["event"])
        for name, n in sorted(self.sup.stats.items()):
            events.add_metric([name], float(n))
        yield events
        states = GaugeMetricFamily("jobharness_supervisor_workers",
                                   "Worker processes of this supervisor by state",
                                   labels=["state"])
        counts: dict[str, int] = {}
        for w in self.sup.describe():
            counts[w["state"]] = counts.get(w["state"], 0) + 1
        for state in ("running", "paused", "exited", "abandoned", "draining"):
            states.add_metric([state], float(counts.get(state, 0)))
        yield states
        storm = self.sup.storm
        yield GaugeMetricFamily("jobharness_supervisor_proactive_breaker_open",
                                "1 while proactive replacement is stopped because most of its "
                                "recent judged firings were false alarms",
                                value=float(storm.open))
        yield GaugeMetricFamily("jobharness_supervisor_proactive_budget_spent",
                                "Proactive replacements in the last hour (the budget is "
                                f"{storm.limits.per_hour})", value=float(storm.spent))


def _kill_count(body: Any, running: int) -> int | str:
    """How many workers a kill request asks for, or what is wrong with it."""
    if not isinstance(body, dict):
        return "the body must be a JSON object"
    count, fraction = body.get("count"), body.get("fraction")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        return "seed must be an integer"
    if (count is None) == (fraction is None):
        return "give exactly one of count or fraction"
    if fraction is not None:
        if isinstance(fraction, bool) or not isinstance(fraction, int | float) \
                or not 0 < fraction <= 1:
            return "fraction must be in (0, 1]"
        count = max(1, round(fraction * running))
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= running:
        return f"count must be 1..{running}"
    return count


def control_app(sup: Supervisor) -> Starlette:
    async def workers(request: Request) -> JSONResponse:
        return JSONResponse(sup.describe())

    async def stats(request: Request) -> JSONResponse:
        return JSONResponse({"stats": dict(sup.stats), "replacements": sup.events[-200:],
                             "workers": len(sup.slots)})

    registry = CollectorRegistry()
    registry.register(SupervisorCollector(sup))

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    async def act(request: Request) -> JSONResponse:
        wid, action = request.path_params["worker_id"], request.path_params["action"]
        if action == "degrade":
            return await _degrade(sup, request, wid)
        if action not in ACTIONS:
            return JSONResponse({"error": f"action must be one of {', '.join(ACTIONS)}"}, 400)
        try:
            pid = sup.signal_worker(wid, action)
        except LookupError as exc:
            return JSONResponse({"error": str(exc)}, 404)
        return JSONResponse({"worker_id": wid, "action": action, "pid": pid})

    async def kill_some(request: Request) -> JSONResponse:
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError:
            return JSONResponse({"error": "body must be JSON"}, 400)
        running = [s.worker_id for s in sup.slots.values() if s.proc.returncode is None]
        count = _kill_count(body, len(running))
        if isinstance(count, str):
            return JSONResponse({"error": count}, 400)
        chosen = random.Random(body.get("seed")).sample(sorted(running), count)
        return JSONResponse({"killed": [{"worker_id": w, "pid": sup.signal_worker(w, "kill")}
                                        for w in chosen]})

    return Starlette(routes=[
        Route("/workers", workers),
        Route("/stats", stats),
        Route("/metrics", metrics),
        Route("/workers/{worker_id}/{action}", act, methods=["POST"]),
        Route("/kill", kill_some, methods=["POST"]),
    ])


def state_file(data_dir: Path, name: str) -> Path:
    return runfolder.supervisor_state(data_dir, name)


def control_request(
    url: str, path: str, *, method: str = "GET", body: dict[str, Any] | None = None,
    token: str | None = None,
) -> Any:
    """Call a supervisor's control surface (the CLI uses this), with the bearer token."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url.rstrip("/") + path, data=data, method=method,
                                 headers={"Content-Type": "application/json",
                                          **auth_headers(token)})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        detail = json.loads(exc.read() or b"{}").get("error", exc.reason)
        raise LookupError(f"supervisor refused {path}: {detail}") from exc
