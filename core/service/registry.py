"""The worker registry: registration, heartbeats to both stores with health samples,
deregistration, and evidence against misbehaving workers (migration 013). A part of
JobService (core/service/base.py has what the parts share).

Registration never displaces a live worker: an id whose row is ACTIVE or DRAINING with a
heartbeat younger than the TTL, held by another host or pid, is refused (WorkerIdInUse) and
the attempt recorded as `id_taken` evidence. Evidence is one row per misbehaviour, with a
warning naming the worker and what it did; a supervisor reads its workers' recent evidence
and quarantines the ones that keep misbehaving (core/supervisor/byzantine.py)."""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Sequence
from typing import Any

from core.errors import DispatchUnavailable, InvalidInput, StoreUnavailable, WorkerIdInUse
from core.service.base import ServiceBase
from core.store.queries import q, store_errors

EVIDENCE_KINDS = ("forged_token", "no_progress", "false_capability", "id_taken")
log = logging.getLogger("jobharness.workers")


class WorkerRegistry(ServiceBase):

    # -- workers ----------------------------------------------------------------------------
    async def register_worker(
        self,
        worker_id: str,
        capabilities: Sequence[str],
        *,
        concurrency: int = 1,
        hostname: str = "",
        pid: int | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        if not worker_id or len(worker_id) > 200:
            raise InvalidInput("worker_id", "must be 1 to 200 characters")
        if not 1 <= concurrency <= 1000:
            raise InvalidInput("concurrency", "must be between 1 and 1000")
        with store_errors():
            took = await self.pool.fetchval(q("register_worker"), worker_id, hostname, pid,
                                            list(capabilities), concurrency, metadata or {},
                                            self.settings.heartbeat_ttl_s)
            if took is None:
                row = await self.pool.fetchrow(q("worker_holder"), worker_id)
                holder = f"pid {row['pid']} on {row['hostname'] or '?'}" if row else "gone"
                await self.record_evidence(worker_id, "id_taken", f"pid {pid} on "
                                           f"{hostname or '?'} tried to register as the live "
                                           f"worker ({holder})")
                raise WorkerIdInUse(worker_id, holder)
        if self.memory is not None:
            self.memory.worker_config(worker_id, {
                "capabilities": list(capabilities), "concurrency": concurrency,
                "hostname": hostname, "pid": pid, **(metadata or {})})
        await self.heartbeat(worker_id)

    async def heartbeat(self, worker_id: str, value: str = "alive",
                        sample: dict[str, Any] | None = None) -> str | None:
        """Refresh liveness in both stores (the latest health sample goes to the state
        memory; samples themselves are recorded by `record_health`); returns the worker's
        PostgreSQL status, None if unknown. Each store may fail independently (invariant 5)."""
        redis_ok = await self.heartbeat_redis(worker_id, value)
        try:
            return await self.heartbeat_postgres(worker_id, sample)
        except StoreUnavailable:
            if not redis_ok:
                raise
            return None

    async def heartbeat_redis(self, worker_id: str, value: str = "alive") -> bool:
        """The Redis half of a heartbeat (the key with its TTL); False if Redis failed."""
        try:
            await self.dispatch.set_heartbeat(worker_id, self.settings.heartbeat_ttl_s, value)
        except DispatchUnavailable:
            return False
        return True

    async def heartbeat_postgres(self, worker_id: str,
                                 sample: dict[str, Any] | None = None) -> str | None:
        """The PostgreSQL half: `last_heartbeat_at`, and the worker's status (None: no row)."""
        with store_errors():
            status = await self.pool.fetchval(q("heartbeat_worker"), worker_id)
        if self.memory is not None:
            self.memory.worker_state(worker_id, {"status": status, **(sample or {})})
        return str(status) if status is not None else None

    async def record_health(self, worker_id: str,
                            samples: list[tuple[float, dict[str, Any]]]) -> None:
        """Store health samples, each with its age in seconds (taken that long ago), in one
        round trip: they are taken every `health_sample_s` whatever the heartbeat interval,
        and sent as taken (several after PostgreSQL was unreachable)."""
        if not samples:
            return
        with store_errors():
            await self.pool.executemany(q("insert_health_sample"), [
                (worker_id, s["rss_bytes"], s["cpu_percent"], s["loop_lag_ms"], s["in_flight"],
                 s["completed"], s["failed"], s["duration_p50_ms"], s["duration_p99_ms"],
                 s["error_rate"], {"timed_out": s.get("timed_out", 0)}, max(0.0, age))
                for age, s in samples])

    async def heartbeat_ages(self, worker_ids: list[str]) -> dict[str, float | None]:
        """Seconds since each worker's PostgreSQL heartbeat (None: not registered, or only a
        stopped or failed row of an earlier process under that id)."""
        with store_errors():
            rows = await self.pool.fetch(q("worker_heartbeat_ages"), worker_ids)
        ages: dict[str, float | None] = {w: None for w in worker_ids}
        ages.update({r["id"]: float(r["age_s"]) for r in rows})
        return ages

    async def record_evidence(self, worker_id: str, kind: str, detail: str,
                              job_id: uuid.UUID | str | None = None) -> None:
        """One piece of evidence against a worker: logged, counted, and stored if PostgreSQL
        can take it (a store outage loses evidence, never a job operation)."""
        if kind not in EVIDENCE_KINDS:
            raise InvalidInput("kind", f"must be one of {', '.join(EVIDENCE_KINDS)}")
        log.warning("evidence against worker %s: %s: %s", worker_id, kind, detail)
        self.stats[f"evidence_{kind}"] += 1
        jid = uuid.UUID(str(job_id)) if job_id is not None else None
        with contextlib.suppress(StoreUnavailable), store_errors():
            await self.pool.execute(q("record_evidence"), worker_id, kind, jid, detail)

    async def recent_evidence(self, worker_ids: list[str], window_s: float
                              ) -> list[dict[str, Any]]:
        """Evidence against these workers within the window, by worker and kind (`id_taken`
        left out: it names the victim's id, not a misbehaviour of the victim)."""
        with store_errors():
            rows = await self.pool.fetch(q("recent_evidence"), worker_ids, window_s)
        return [dict(r) for r in rows]

    async def quarantine_worker(self, worker_id: str, reason: str) -> None:
        """No more leases for this worker (lease_jobs and lease_runnable refuse it)."""
        await self.deregister_worker(worker_id, status="QUARANTINED", reason=reason)

    async def set_worker_status(self, worker_id: str, status: str) -> None:
        with store_errors():
            await self.pool.execute(q("set_worker_status"), worker_id, status)

    async def deregister_worker(
        self, worker_id: str, *, status: str = "STOPPED", reason: str | None = None
    ) -> None:
        with store_errors():
            await self.pool.execute(q("stop_worker"), worker_id, status, reason)
        with contextlib.suppress(DispatchUnavailable):
            await self.dispatch.clear_heartbeat(worker_id)
        if self.memory is not None:
            self.memory.worker_state(worker_id, {"status": status, "reason": reason})

    async def list_workers(self, *, status: str | None = None, limit: int = 1000) -> list[
            dict[str, Any]]:
        with store_errors():
            rows = await self.pool.fetch(q("list_workers"), status, limit)
        return [dict(r) for r in rows]
