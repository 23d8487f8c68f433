"""The run's sampler: once a second, job counts by status, Redis queue depths, workers active
and failed, whether the API, Redis and PostgreSQL answer, and the machine's memory in use.
Rows go to `samples.csv` as they are taken and stay in memory for the recovery figures, so
nothing is read back. While PostgreSQL is unavailable (a drill restarts it) a row repeats the
last counts read and says pg_up 0; while Redis is, its depths are empty and redis_up 0."""

from __future__ import annotations

import csv
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import psutil

from core.contract.observe import JOB_COUNTS, WORKER_COUNTS
from core.dispatch.index import RedisDispatch
from core.errors import DispatchUnavailable, StoreUnavailable

STATUSES = ("WAITING", "PENDING", "PROCESSING", "COMPLETED", "DEAD", "CANCELLED")
DEPTHS = ("high", "medium", "low", "delayed", "processing", "dead_letter")
FIELDS = ["ts", "elapsed_s", "phase", *STATUSES, *DEPTHS, "workers_active",
          "workers_failed", "api_up", "redis_up", "mem_used_mib", "pg_up"]


def mem_used_mib() -> int:
    return int(psutil.virtual_memory().used // (1024 * 1024))


class Sampler:
    def __init__(self, path: Path, pool: Any, dispatch: RedisDispatch, api_url: str,
                 http: httpx.AsyncClient, started: float) -> None:
        self.pool = pool
        self.dispatch = dispatch
        self.api_url = api_url
        self.http = http
        self.started = started  # monotonic: elapsed_s counts from here
        self.rows: list[dict[str, Any]] = []
        self._fh = open(path, "w", newline="")  # noqa: SIM115 (closed by close())
        self._writer = csv.DictWriter(self._fh, fieldnames=FIELDS)
        self._writer.writeheader()
        self._last_pg: tuple[dict[str, int], dict[str, int]] = ({}, {"active": 0, "failed": 0})

    def __enter__(self) -> Sampler:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._fh.close()

    async def sample(self, phase: str) -> dict[str, Any]:
        """Take one row, write it, and return it."""
        pg_up = 1
        try:
            counts = {r["status"]: int(r["n"]) for r in await self.pool.fetch(JOB_COUNTS)}
            w = await self.pool.fetchrow(WORKER_COUNTS)
            self._last_pg = counts, {"active": int(w["active"]), "failed": int(w["failed"])}
        except StoreUnavailable:
            pg_up = 0
        counts, workers = self._last_pg
        try:
            depths = await self.dispatch.depths()
            redis_up = 1
        except DispatchUnavailable:
            depths, redis_up = {}, 0
        try:
            api_up = int((await self.http.get(f"{self.api_url}/health", timeout=2)
                          ).status_code == 200)
        except httpx.HTTPError:
            api_up = 0
        row = {"ts": f"{time.time():.3f}", "elapsed_s": f"{time.monotonic() - self.started:.1f}",
               "phase": phase, **{k: counts.get(k, 0) for k in STATUSES},
               **{k: depths.get(k, 0) for k in DEPTHS},
               "workers_active": workers["active"], "workers_failed": workers["failed"],
               "api_up": api_up, "redis_up": redis_up, "mem_used_mib": mem_used_mib(),
               "pg_up": pg_up}
        self._writer.writerow(row)
        self._fh.flush()
        self.rows.append(row)
        return row

    @property
    def peak_mem_used_mib(self) -> int | None:
        return max((int(r["mem_used_mib"]) for r in self.rows), default=None)
