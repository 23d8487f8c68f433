"""The job model: statuses, the create spec with its validation, and what a lease carries.

Pure: imports only the standard library. Validation here is the single place where bad input
is refused before anything is written (invariant 7).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from core.errors import InvalidInput, PayloadTooLarge, UnknownJobType


class JobStatus(StrEnum):
    WAITING = "WAITING"
    PENDING = "PENDING"
    PROCESSING = "PROCESSING"
    COMPLETED = "COMPLETED"
    DEAD = "DEAD"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({JobStatus.COMPLETED, JobStatus.DEAD, JobStatus.CANCELLED})


class ExecutionStatus(StrEnum):
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    TIMED_OUT = "TIMED_OUT"
    LEASE_EXPIRED = "LEASE_EXPIRED"
    CANCELLED = "CANCELLED"
    RELEASED = "RELEASED"


# The limits of a job's fields; the API's request models take theirs from here.
MIN_PRIORITY = 1
MAX_PRIORITY = 5
DEFAULT_PRIORITY = 3
MAX_TEXT = 200  # job_type, capability, idempotency key, ref, tenant, worker id
MAX_RETRIES = 100
MAX_TIMEOUT_S = 86_400.0
MAX_DELAY_S = 365 * 86_400.0
MAX_DEPENDENCIES = 1_000


@dataclass(frozen=True, kw_only=True)
class JobSpec:
    """What a client asks for. `ref` names the job inside one batch so others can depend on it."""

    job_type: str
    payload: dict[str, Any] = field(default_factory=dict)
    priority: int = 3
    max_retries: int = 5
    timeout_s: float = 300.0
    run_at: datetime | None = None
    delay_s: float = 0.0
    required_capability: str | None = None
    idempotency_key: str | None = None
    depends_on: tuple[str, ...] = ()
    ref: str | None = None
    tenant: str | None = None  # who the job belongs to (quotas and fair shares), or nobody


@dataclass(frozen=True, kw_only=True)
class ValidatedSpec:
    spec: JobSpec
    payload_json: str


@dataclass(frozen=True, kw_only=True)
class SpecLimits:
    known_job_types: frozenset[str]
    max_payload_bytes: int
    disabled_job_types: frozenset[str] = frozenset()  # known, but turned off here
    max_retries_limit: int = MAX_RETRIES
    max_timeout_s: float = MAX_TIMEOUT_S
    max_dependencies: int = MAX_DEPENDENCIES


def validate_spec(spec: Any, limits: SpecLimits) -> ValidatedSpec:
    """Check every field of `spec`; raise a typed error naming the first bad field."""
    if not isinstance(spec, JobSpec):
        raise InvalidInput("spec", f"expected JobSpec, got {type(spec).__name__}")
    if not isinstance(spec.job_type, str) or not spec.job_type:
        raise InvalidInput("job_type", "must be a non-empty string")
    _check_texts(spec)
    if spec.job_type in limits.disabled_job_types:
        raise InvalidInput("job_type", f"job type {spec.job_type!r} is a synthetic handler, "
                           "off on this deployment (JOBHARNESS_SYNTHETIC_HANDLERS=1 on its API "
                           "and workers turns them on)")
    if spec.job_type not in limits.known_job_types:
        raise UnknownJobType(spec.job_type, sorted(limits.known_job_types))
    _check_int("priority", spec.priority, MIN_PRIORITY, MAX_PRIORITY)
    _check_int("max_retries", spec.max_retries, 0, limits.max_retries_limit)
    _check_number("timeout_s", spec.timeout_s, 0.0, limits.max_timeout_s, low_open=True)
    _check_number("delay_s", spec.delay_s, 0.0, MAX_DELAY_S)
    if spec.run_at is not None:
        if not isinstance(spec.run_at, datetime) or spec.run_at.tzinfo is None:
            raise InvalidInput("run_at", "must be a timezone-aware datetime")
        if spec.delay_s:
            raise InvalidInput("run_at", "give either run_at or delay_s, not both")
    if spec.required_capability is not None and (
        not isinstance(spec.required_capability, str) or not spec.required_capability
    ):
        raise InvalidInput("required_capability", "must be a non-empty string or null")
    if spec.idempotency_key is not None and (
        not isinstance(spec.idempotency_key, str) or not 0 < len(spec.idempotency_key) <= MAX_TEXT
    ):
        raise InvalidInput("idempotency_key", f"must be a string of 1 to {MAX_TEXT} characters")
    if spec.tenant is not None and (
        not isinstance(spec.tenant, str) or not 0 < len(spec.tenant) <= MAX_TEXT
    ):
        raise InvalidInput("tenant", f"must be a string of 1 to {MAX_TEXT} characters or null")
    _check_dependencies(spec, limits)
    if not isinstance(spec.payload, dict):
        raise InvalidInput("payload", "must be a JSON object")
    return ValidatedSpec(spec=spec, payload_json=_payload_json(spec.payload, limits))


_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)  # made once, not per job


def _payload_json(payload: dict[str, Any], limits: SpecLimits) -> str:
    """The payload as compact JSON that PostgreSQL's jsonb will store, within the limit."""
    try:
        payload_json = _ENCODER.encode(payload)
    except (TypeError, ValueError) as exc:
        raise InvalidInput("payload", f"not JSON-serialisable: {exc}") from exc
    if "\\u0000" in payload_json:
        raise InvalidInput("payload", "NUL characters (\\u0000) cannot be stored")
    if "\\ud" in payload_json and _has_lone_surrogate(payload):  # rare: look closer
        raise InvalidInput("payload", "a lone surrogate (U+D800 to U+DFFF) cannot be stored")
    size = len(payload_json.encode())
    if size > limits.max_payload_bytes:
        raise PayloadTooLarge(size, limits.max_payload_bytes)
    return payload_json


def _has_lone_surrogate(value: Any) -> bool:
    """Anywhere in a JSON value (keys included): text UTF-8 cannot encode."""
    if isinstance(value, str):
        return _unencodable(value)
    if isinstance(value, dict):
        return any(_has_lone_surrogate(k) or _has_lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_has_lone_surrogate(v) for v in value)
    return False


def _unencodable(text: str) -> bool:
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _check_texts(spec: JobSpec) -> None:
    texts = (spec.job_type, spec.required_capability, spec.idempotency_key, spec.ref,
             spec.tenant)
    if any(isinstance(t, str) and ("\x00" in t or _unencodable(t))
           for t in texts):  # rare: find which one
        for name in ("job_type", "required_capability", "idempotency_key", "ref", "tenant"):
            check_text(name, getattr(spec, name))
    for dep in spec.depends_on if isinstance(spec.depends_on, tuple | list) else ():
        check_text("depends_on", dep)


def check_text(name: str, value: Any) -> None:
    """PostgreSQL text cannot hold NUL, nor text UTF-8 cannot encode (a lone surrogate):
    refuse either as input instead of failing on write."""
    if isinstance(value, str) and "\x00" in value:
        raise InvalidInput(name, "must not contain NUL characters")
    if isinstance(value, str) and _unencodable(value):
        raise InvalidInput(name, "must be valid Unicode text (a lone surrogate, U+D800 to "
                                 "U+DFFF, cannot be stored)")


def _check_dependencies(spec: JobSpec, limits: SpecLimits) -> None:
    deps = spec.depends_on
    if deps == ():
        return
    if not isinstance(deps, tuple | list) or not all(isinstance(d, str) and d for d in deps):
        raise InvalidInput("depends_on", "must be a list of job ids or batch refs")
    if len(deps) > limits.max_dependencies:
        raise InvalidInput("depends_on", f"more than {limits.max_dependencies} dependencies")
    if len(set(deps)) != len(deps):
        raise InvalidInput("depends_on", "lists a dependency twice")
    if spec.ref is not None and spec.ref in deps:
        raise InvalidInput("depends_on", f"job {spec.ref!r} depends on itself")


def _check_int(name: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(name, f"must be an integer, got {value!r}")
    if not low <= value <= high:
        raise InvalidInput(name, f"must be between {low} and {high}, got {value}")


def _check_number(
    name: str, value: Any, low: float, high: float, *, low_open: bool = False
) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInput(name, f"must be a number, got {value!r}")
    if value != value or (value <= low if low_open else value < low) or value > high:
        bound = "(" if low_open else "["
        raise InvalidInput(name, f"must be in {bound}{low}, {high}], got {value}")


def parse_job_id(value: str, field_name: str = "job_id") -> uuid.UUID:
    """Parse a job id; a malformed one is an input error, not a 'not found'."""
    try:
        return uuid.UUID(str(value))
    except ValueError as exc:
        raise InvalidInput(field_name, f"not a UUID: {value!r}") from exc


@dataclass(frozen=True, kw_only=True)
class Lease:
    """A worker's right to run one attempt of a job; results are accepted only with `token`."""

    job_id: str
    token: int
    attempt: int
    job_type: str
    payload: dict[str, Any]
    priority: int
    timeout_s: float
    lease_s: float
    worker_id: str
    via: str  # "redis" or "postgres": which path acquired it
    capability: str | None = None  # the job's required capability, if any


@dataclass(frozen=True, kw_only=True)
class Job:
    """A job as stored (read model)."""

    id: str
    job_type: str
    status: JobStatus
    priority: int
    payload: dict[str, Any]
    retry_count: int
    max_retries: int
    timeout_s: float
    required_capability: str | None
    idempotency_key: str | None
    worker_id: str | None
    lease_token: int | None
    result: Any
    last_error: str | None
    cancel_reason: str | None
    created_at: datetime
    updated_at: datetime
    run_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    base_priority: int | None = None  # its own priority while an inherited one is higher
    tenant: str | None = None
