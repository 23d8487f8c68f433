"""The memory owner's read surface (HTTP on 127.0.0.1): what the CLI and the job API use to
read state memory, since only the owner may open it.

    GET  /memory/{namespace}/{key}        one live entry (404 when absent or expired)
    GET  /memory/{namespace}?group=&limit= live entries
    GET  /stats                            owner status and counts per namespace
    POST /snapshot {"name": N}             consistent snapshot to a file of the owner's
                                           snapshots folder (a name, never a path)
    POST /restore  {"name": N, "wipe": B}  load a snapshot of that folder, checked whole
                                           before anything is wiped
    POST /purge                            delete expired entries now
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from core.errors import InvalidInput
from core.memory.owner import MemoryOwner
from core.memory.port import NAMESPACES, MemoryUnavailable


def _err(status: int, field: str, msg: str) -> JSONResponse:
    return JSONResponse({"detail": [{"loc": [field], "msg": msg}]}, status)


async def _body(request: Request) -> dict[str, Any]:
    try:
        data = json.loads(await request.body() or b"{}")
    except ValueError as exc:
        raise InvalidInput("body", "malformed JSON") from exc
    if not isinstance(data, dict):
        raise InvalidInput("body", "must be a JSON object")
    return data


def _owner(request: Request) -> MemoryOwner:
    return request.app.state.owner  # type: ignore[no-any-return]


async def get_one(request: Request) -> JSONResponse:
    ns, key = request.path_params["namespace"], request.path_params["key"]
    entry = await _owner(request).memory.get(ns, key)
    if entry is None:
        return _err(404, "key", f"{ns}/{key} not found (absent or expired)")
    return JSONResponse(entry.as_dict())


async def list_ns(request: Request) -> JSONResponse:
    try:
        limit = int(request.query_params.get("limit", "100"))
    except ValueError:
        return _err(422, "limit", "must be an integer")
    entries = await _owner(request).memory.list(
        request.path_params["namespace"], group=request.query_params.get("group"), limit=limit)
    return JSONResponse([e.as_dict() for e in entries])


async def stats(request: Request) -> JSONResponse:
    owner = _owner(request)
    counts: dict[str, int | None] = {}
    for ns in NAMESPACES:
        try:
            counts[ns] = await owner.memory.count(ns)
        except MemoryUnavailable:
            counts[ns] = None
    return JSONResponse({**owner.status(), "entries": counts})


SNAPSHOT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


async def _path(request: Request) -> tuple[Path, dict[str, Any]]:
    """The snapshot file a request names: a plain file name in the owner's snapshots folder.
    A path is refused, so no request reads or writes anywhere else on the host."""
    body = await _body(request)
    if "path" in body:
        raise InvalidInput("path", "snapshots are named, not placed: give name (a file in the "
                           "owner's snapshots folder)")
    name = body.get("name")
    if not isinstance(name, str) or not SNAPSHOT_NAME.match(name) or ".." in name:
        raise InvalidInput("name", "a file name of letters, digits, '.', '_' and '-' (no "
                           "folder)")
    return request.app.state.snapshots / name, body


async def snapshot(request: Request) -> JSONResponse:
    path, _ = await _path(request)
    return JSONResponse(await _owner(request).snapshot(path))


async def restore(request: Request) -> JSONResponse:
    path, body = await _path(request)
    if not path.is_file():
        raise InvalidInput("name", "no snapshot of that name in the owner's snapshots folder")
    return JSONResponse(await _owner(request).restore(path, wipe=bool(body.get("wipe"))))


async def purge(request: Request) -> JSONResponse:
    return JSONResponse({"purged": await _owner(request).memory.purge_expired()})


async def _invalid(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, InvalidInput)
    return _err(422, exc.field, str(exc))


async def _unavailable(request: Request, exc: Exception) -> JSONResponse:
    return _err(503, "memory", str(exc))


def memory_app(owner: MemoryOwner, snapshots: Path) -> Starlette:
    """The owner's HTTP surface; snapshots are files of `snapshots`, named by requests."""
    app = Starlette(
        routes=[Route("/memory/{namespace}/{key:path}", get_one),
                Route("/memory/{namespace}", list_ns), Route("/stats", stats),
                Route("/snapshot", snapshot, methods=["POST"]),
                Route("/restore", restore, methods=["POST"]),
                Route("/purge", purge, methods=["POST"])],
        exception_handlers={InvalidInput: _invalid, MemoryUnavailable: _unavailable})
    app.state.owner = owner
    app.state.snapshots = snapshots
    return app
