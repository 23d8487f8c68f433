"""Steady-state probes of drills. Each takes its spec from the drill file and returns
(holds, observed value). They read the contract (tables) and the API's /health only."""

from __future__ import annotations

from typing import Any

import httpx

from chaos.drill import Probe
from core.contract.observe import ACTIVE_WORKERS, BACKLOG
from core.errors import StoreUnavailable


def make_probes(pool: Any, api_url: str, http: httpx.AsyncClient,
                expected_workers: int | None = None) -> dict[str, Probe]:
    async def api_healthy(spec: dict[str, Any]) -> tuple[bool, Any]:
        try:
            r = await http.get(f"{api_url}/health", timeout=5)
        except httpx.HTTPError as exc:
            return False, str(exc)
        return r.status_code == 200, r.json().get("status")

    async def workers_active_at_least(spec: dict[str, Any]) -> tuple[bool, Any]:
        """`count` workers ACTIVE, or a `fraction` of the run's expected workers."""
        try:
            n = int(await pool.fetchval(ACTIVE_WORKERS))
        except StoreUnavailable as exc:
            return False, str(exc)
        if "count" in spec or expected_workers is None:
            return n >= int(spec.get("count", 1)), n
        return n >= float(spec.get("fraction", 1.0)) * expected_workers, n

    async def backlog_below(spec: dict[str, Any]) -> tuple[bool, Any]:
        try:
            n = int(await pool.fetchval(BACKLOG))
        except StoreUnavailable as exc:
            return False, str(exc)
        return n < int(spec.get("value", 1000)), n

    return {"api_healthy": api_healthy, "workers_active_at_least": workers_active_at_least,
            "backlog_below": backlog_below}
