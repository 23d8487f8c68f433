"""How the core's typed refusals become HTTP answers: 4xx naming the field (invariant 7), 503
for a store outage, never a 500 for bad input."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from core.errors import (
    InvalidInput,
    InvalidTransition,
    JobNotFound,
    StaleLease,
    StoreUnavailable,
)

# a request body's cap: a batch of 10,000 jobs of 1.6 KB payloads, or 60 of the largest; a
# body near the cap holds the event loop about 0.3 s (benchmarks/body_stall.py)
MAX_BODY_BYTES = 16 * 1024 * 1024


RETRY_AFTER_S = 1  # what a 503 tells a client to wait before trying again


def error_response(status: int, field: str, message: str) -> JSONResponse:
    where = "path" if field == "job_id" else "body"
    headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else None
    return JSONResponse({"detail": [{"loc": [where, field], "msg": message}]}, status,
                        headers=headers)


def add_error_handlers(app: FastAPI) -> None:
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
        return error_response(422, "input", f"invalid input: {exc}")

    async def invalid_request(request: Request, exc: Exception) -> JSONResponse:
        # where and why only: echoing the input could repeat what cannot even be encoded (a
        # lone surrogate) or what should not be repeated
        assert isinstance(exc, RequestValidationError)
        return JSONResponse({"detail": [{"loc": list(e.get("loc", ())), "msg": e.get("msg"),
                                         "type": e.get("type")} for e in exc.errors()]}, 422)

    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(asyncpg.DataError, data_error)
    for exc_type, status, field in statuses:
        def handler(request: Request, exc: Exception, status: int = status,
                    field: Callable[[Any], str] = field) -> JSONResponse:
            return error_response(status, field(exc), str(exc))

        app.add_exception_handler(exc_type, handler)
