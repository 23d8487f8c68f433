"""Reads of jobs and the dead-letter queue's operations. A part of JobService
(core/service/base.py has what the parts share)."""

from __future__ import annotations

import contextlib
from typing import Any

from core.errors import DispatchUnavailable, InvalidInput, JobNotFound
from core.jobs.model import Job, JobStatus, check_text, parse_job_id
from core.service.base import ServiceBase
from core.store.queries import q, store_errors


class JobReads(ServiceBase):

    # -- reads ------------------------------------------------------------------------------
    async def get(self, job_id: str) -> Job:
        jid = parse_job_id(job_id)
        with store_errors():
            row = await self.pool.fetchrow(q("get_job"), jid)
        if row is None:
            raise JobNotFound(job_id)
        names = Job.__dataclass_fields__
        data = {k: row[k] for k in names if k in row}
        data["id"] = str(row["id"])
        data["status"] = JobStatus(row["status"])
        return Job(**data)

    async def list_jobs(
        self, *, status: str | None = None, job_type: str | None = None, limit: int = 100,
        offset: int = 0,
    ) -> list[dict[str, Any]]:
        if status is not None and status not in JobStatus.__members__:
            raise InvalidInput("status", f"must be one of {', '.join(JobStatus)}")
        if not 1 <= limit <= 10_000:
            raise InvalidInput("limit", "must be between 1 and 10000")
        if offset < 0:
            raise InvalidInput("offset", "must be >= 0")
        check_text("job_type", job_type)
        with store_errors():
            rows = await self.pool.fetch(q("list_jobs"), status, job_type, limit, offset)
        return [dict(r) | {"id": str(r["id"])} for r in rows]

    async def executions(self, job_id: str) -> list[dict[str, Any]]:
        jid = parse_job_id(job_id)
        with store_errors():
            rows = await self.pool.fetch(q("job_executions"), jid)
        return [dict(r) for r in rows]

    async def counts(self) -> dict[str, int]:
        with store_errors():
            rows = await self.pool.fetch(q("count_by_status"))
        out = {s.value: 0 for s in JobStatus}
        out.update({r["status"]: r["n"] for r in rows})
        return out

    # -- dead-letter queue ------------------------------------------------------------------
    async def dlq_list(
        self, *, job_type: str | None = None, limit: int = 100, offset: int = 0
    ) -> list[dict[str, Any]]:
        if not 1 <= limit <= 10_000 or offset < 0:
            raise InvalidInput("limit", "limit must be 1..10000 and offset >= 0")
        check_text("job_type", job_type)
        with store_errors():
            rows = await self.pool.fetch(q("dlq_list"), job_type, limit, offset)
        return [dict(r) | {"job_id": str(r["job_id"])} for r in rows]

    async def dlq_purge(self, *, older_than_s: float | None = None) -> int:
        """Delete DLQ entries older than `older_than_s` (default: the retention period)."""
        if older_than_s is None:
            older_than_s = self.settings.dlq_retention_days * 86_400
        if older_than_s < 0:
            raise InvalidInput("older_than_s", "must be >= 0")
        with store_errors():
            rows = await self.pool.fetch(q("dlq_purge"), older_than_s)
        ids = [str(r["job_id"]) for r in rows]
        with contextlib.suppress(DispatchUnavailable):
            await self.dispatch.forget_dead(ids)
        return len(ids)
