"""Request and response models of the HTTP API (pydantic), mapped onto the core's JobSpec. Their
bounds are the core's (`core.jobs.model`, `core.jobs.limits`), so the two cannot disagree."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from core.jobs.limits import MAX_RATE, MAX_RUNNING_LIMIT, MAX_WEIGHT, MIN_RATE
from core.jobs.model import (
    DEFAULT_PRIORITY,
    MAX_DELAY_S,
    MAX_DEPENDENCIES,
    MAX_PRIORITY,
    MAX_RETRIES,
    MAX_TEXT,
    MAX_TIMEOUT_S,
    MIN_PRIORITY,
    JobSpec,
)
from core.jobs.planning import MAX_BATCH

# every input model: unknown fields refused, NaN and Infinity are not numbers
INPUT = ConfigDict(extra="forbid", allow_inf_nan=False)


class JobIn(BaseModel):
    """A job to create. Every field is checked again by the core (invariant 7)."""

    model_config = INPUT

    job_type: str = Field(min_length=1, max_length=MAX_TEXT)
    payload: dict[str, Any] = Field(default_factory=dict)
    # strict: "3" and true are not priorities
    priority: int = Field(DEFAULT_PRIORITY, ge=MIN_PRIORITY, le=MAX_PRIORITY, strict=True)
    max_retries: int = Field(5, ge=0, le=MAX_RETRIES, strict=True)
    timeout_s: float = Field(300.0, gt=0, le=MAX_TIMEOUT_S)
    run_at: datetime | None = None
    delay_s: float = Field(0.0, ge=0, le=MAX_DELAY_S)
    required_capability: str | None = Field(None, min_length=1, max_length=MAX_TEXT)
    idempotency_key: str | None = Field(None, min_length=1, max_length=MAX_TEXT)
    depends_on: list[str] = Field(default_factory=list, max_length=MAX_DEPENDENCIES)
    ref: str | None = Field(None, min_length=1, max_length=MAX_TEXT)
    tenant: str | None = Field(None, min_length=1, max_length=MAX_TEXT)

    def to_spec(self) -> JobSpec:
        return JobSpec(
            job_type=self.job_type, payload=self.payload, priority=self.priority,
            max_retries=self.max_retries, timeout_s=self.timeout_s, run_at=self.run_at,
            delay_s=self.delay_s, required_capability=self.required_capability,
            idempotency_key=self.idempotency_key, depends_on=tuple(self.depends_on),
            ref=self.ref, tenant=self.tenant,
        )


class BatchIn(BaseModel):
    model_config = INPUT

    jobs: list[JobIn] = Field(min_length=1, max_length=MAX_BATCH)


class CancelIn(BaseModel):
    model_config = INPUT

    reason: str = Field("cancelled through the API", min_length=1, max_length=1000)


class PurgeIn(BaseModel):
    model_config = INPUT

    older_than_days: float | None = Field(None, ge=0, le=36_500)
    all: bool = Field(False, strict=True)
    # all=true deletes every entry for good: say so explicitly
    confirm: bool = Field(False, strict=True)


class LimitIn(BaseModel):
    """The limits of one job type or tenant (replacing what it had). Checked again by the
    core."""

    model_config = INPUT

    max_running: int | None = Field(None, ge=1, le=MAX_RUNNING_LIMIT, strict=True)
    rate_per_s: float | None = Field(None, ge=MIN_RATE, le=MAX_RATE)
    burst: int | None = Field(None, ge=1, le=MAX_RUNNING_LIMIT, strict=True)
    weight: int | None = Field(None, ge=1, le=MAX_WEIGHT, strict=True)


class CreatedOut(BaseModel):
    job_id: str
    status: str
    created: bool
    ref: str | None = None
