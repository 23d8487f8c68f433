"""Request and response models of the HTTP API (pydantic), mapped onto the core's JobSpec."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from core.model import JobSpec


class JobIn(BaseModel):
    """A job to create. Every field is checked again by the core (invariant 7)."""

    model_config = ConfigDict(extra="forbid")

    job_type: str = Field(min_length=1, max_length=200)
    payload: dict[str, Any] = Field(default_factory=dict)
    priority: int = Field(3, ge=1, le=5)
    max_retries: int = Field(5, ge=0, le=100)
    timeout_s: float = Field(300.0, gt=0, le=86_400)
    run_at: datetime | None = None
    delay_s: float = Field(0.0, ge=0, le=365 * 86_400)
    required_capability: str | None = Field(None, min_length=1, max_length=200)
    idempotency_key: str | None = Field(None, min_length=1, max_length=200)
    depends_on: list[str] = Field(default_factory=list, max_length=1000)
    ref: str | None = Field(None, min_length=1, max_length=200)
    tenant: str | None = Field(None, min_length=1, max_length=200)

    def to_spec(self) -> JobSpec:
        return JobSpec(
            job_type=self.job_type, payload=self.payload, priority=self.priority,
            max_retries=self.max_retries, timeout_s=self.timeout_s, run_at=self.run_at,
            delay_s=self.delay_s, required_capability=self.required_capability,
            idempotency_key=self.idempotency_key, depends_on=tuple(self.depends_on),
            ref=self.ref, tenant=self.tenant,
        )


class BatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    jobs: list[JobIn] = Field(min_length=1, max_length=10_000)


class CancelIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field("cancelled through the API", min_length=1, max_length=1000)


class PurgeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    older_than_days: float | None = Field(None, ge=0, le=36_500)
    all: bool = False


class LimitIn(BaseModel):
    """The limits of one job type or tenant (replacing what it had). Checked again by the
    core."""

    model_config = ConfigDict(extra="forbid")

    max_running: int | None = Field(None, ge=1, le=1_000_000)
    rate_per_s: float | None = Field(None, gt=0, le=1_000_000)
    burst: int | None = Field(None, ge=1, le=1_000_000)
    weight: int | None = Field(None, ge=1, le=1000)


class CreatedOut(BaseModel):
    job_id: str
    status: str
    created: bool
    ref: str | None = None
