"""Steady-state probes of drills. Each takes its spec from the drill file and returns a
`ProbeResult`: whether it holds, what it found, what it expected, and why it failed. They read
the contract (tables), the API's /health and the supervisor's control surface only.

The fleet `workers_active_at_least` expects comes from the system under test: the worker
count the run started, or, against a deployment, the fleet its supervisor keeps (the control
surface's /stats) or else the workers ACTIVE when the drill began. Never from a scenario the
deployment knows nothing about."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import httpx

from chaos.drill import Probe, ProbeResult
from core.contract.observe import ACTIVE_WORKERS, BACKLOG
from core.errors import StoreUnavailable


@dataclass(frozen=True)
class Fleet:
    """The workers a deployment is expected to keep ACTIVE, and where that number came from."""

    size: int
    source: str


async def deployment_fleet(pool: Any, http: httpx.AsyncClient,
                           control_url: str | None) -> Fleet | None:
    """The fleet of a running deployment: its supervisor's own count when a control surface
    is given, else the workers ACTIVE now (before any fault); None when neither answers."""
    if control_url:
        try:
            r = await http.get(f"{control_url.rstrip('/')}/stats", timeout=5)
            if r.status_code == 200 and isinstance(r.json().get("workers"), int):
                return Fleet(r.json()["workers"], f"the supervisor at {control_url}")
        except (httpx.HTTPError, ValueError):
            pass
    try:
        n = int(await pool.fetchval(ACTIVE_WORKERS))
    except StoreUnavailable:
        return None
    return Fleet(n, "the workers ACTIVE before the faults") if n else None


def make_probes(pool: Any, api_url: str, http: httpx.AsyncClient,
                fleet: Fleet | None = None) -> dict[str, Probe]:
    async def api_healthy(spec: dict[str, Any]) -> ProbeResult:
        try:
            r = await http.get(f"{api_url}/health", timeout=5)
        except httpx.HTTPError as exc:
            return ProbeResult(False, None, "HTTP 200", f"no answer from {api_url}/health: "
                               f"{type(exc).__name__} {exc}".strip())
        try:
            status = r.json().get("status")
        except ValueError:
            status = r.text[:80]
        ok = r.status_code == 200
        return ProbeResult(ok, f"HTTP {r.status_code} {status}", "HTTP 200",
                           "" if ok else f"{api_url}/health answered {r.status_code}")

    async def workers_active_at_least(spec: dict[str, Any]) -> ProbeResult:
        """`count` workers ACTIVE, or a `fraction` of the system's fleet."""
        if "count" in spec:
            need, basis = int(spec["count"]), "the drill's count"
        elif fleet is None:
            need, basis = 1, "at least one (the fleet size is unknown)"
        else:
            fraction = float(spec.get("fraction", 1.0))
            need = max(1, math.ceil(fraction * fleet.size))
            basis = f"{fraction:g} x {fleet.size}, the fleet of {fleet.source}"
        try:
            n = int(await pool.fetchval(ACTIVE_WORKERS))
        except StoreUnavailable as exc:
            return ProbeResult(False, None, f">= {need} ACTIVE ({basis})",
                               f"the workers table could not be read: {exc}")
        ok = n >= need
        return ProbeResult(ok, n, f">= {need} ACTIVE ({basis})",
                           "" if ok else f"only {n} of {need} workers ACTIVE")

    async def backlog_below(spec: dict[str, Any]) -> ProbeResult:
        limit = int(spec.get("value", 1000))
        try:
            n = int(await pool.fetchval(BACKLOG))
        except StoreUnavailable as exc:
            return ProbeResult(False, None, f"< {limit} jobs waiting, pending or processing",
                               f"the jobs table could not be read: {exc}")
        ok = n < limit
        return ProbeResult(ok, n, f"< {limit} jobs waiting, pending or processing",
                           "" if ok else f"{n} jobs in the backlog")

    return {"api_healthy": api_healthy, "workers_active_at_least": workers_active_at_least,
            "backlog_below": backlog_below}
