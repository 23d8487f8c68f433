"""The supervisor's control surface: a small HTTP API on 127.0.0.1 (or a chosen address) to
list workers and kill, pause, resume or terminate given ones. Chaos drills use it locally and
against staging supervisors; its URL is written to a state file next to the data folder.

    GET  /workers                       the slots and their processes
    GET  /stats                         counters and the replacement journal
    POST /workers/{id}/{action}         action: kill | pause | resume | terminate
    POST /kill   {"count": N} or {"fraction": F, "seed": S}   SIGKILL random workers
"""

from __future__ import annotations

import json
import random
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from core.supervisor import Supervisor

ACTIONS = ("kill", "pause", "resume", "terminate")


def control_app(sup: Supervisor) -> Starlette:
    async def workers(request: Request) -> JSONResponse:
        return JSONResponse(sup.describe())

    async def stats(request: Request) -> JSONResponse:
        return JSONResponse({"stats": dict(sup.stats), "replacements": sup.events[-200:],
                             "workers": len(sup.slots)})

    async def act(request: Request) -> JSONResponse:
        wid, action = request.path_params["worker_id"], request.path_params["action"]
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
        count, fraction = body.get("count"), body.get("fraction")
        if (count is None) == (fraction is None):
            return JSONResponse({"error": "give exactly one of count or fraction"}, 400)
        if fraction is not None:
            if not isinstance(fraction, int | float) or not 0 < fraction <= 1:
                return JSONResponse({"error": "fraction must be in (0, 1]"}, 400)
            count = max(1, round(fraction * len(running)))
        if not isinstance(count, int) or not 1 <= count <= len(running):
            return JSONResponse({"error": f"count must be 1..{len(running)}"}, 400)
        chosen = random.Random(body.get("seed")).sample(sorted(running), count)
        return JSONResponse({"killed": [{"worker_id": w, "pid": sup.signal_worker(w, "kill")}
                                        for w in chosen]})

    return Starlette(routes=[
        Route("/workers", workers),
        Route("/stats", stats),
        Route("/workers/{worker_id}/{action}", act, methods=["POST"]),
        Route("/kill", kill_some, methods=["POST"]),
    ])


def state_file(data_dir: Path, name: str) -> Path:
    return data_dir / f"supervisor-{name}.json"


def control_request(
    url: str, path: str, *, method: str = "GET", body: dict[str, Any] | None = None
) -> Any:
    """Call a supervisor's control surface (the CLI and the chaos actions use this)."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url.rstrip("/") + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        detail = json.loads(exc.read() or b"{}").get("error", exc.reason)
        raise LookupError(f"supervisor refused {path}: {detail}") from exc
