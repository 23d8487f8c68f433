"""Typed refusals of the job system: one root, each class carrying its data as fields.

Control flow (`Retry`, `Cancelled`) is kept apart from failures; driver errors are translated
at the adapters with `raise ... from exc`.
"""

from __future__ import annotations

from typing import Any


class JobHarnessError(Exception):
    """A job system error occurred."""

    def __init__(self, message: str | None = None, **fields: Any) -> None:
        self.fields = fields
        for name, value in fields.items():
            setattr(self, name, value)
        super().__init__(message or (self.__doc__ or "").strip())


class InvalidInput(JobHarnessError):
    """Invalid input."""

    field: str
    reason: str

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"invalid {field}: {reason}", field=field, reason=reason)


class UnknownJobType(InvalidInput):
    """The job type is not registered."""

    def __init__(self, job_type: str, known: list[str]) -> None:
        super().__init__("job_type", f"unknown job type {job_type!r} (known: {', '.join(known)})")
        self.job_type = job_type


class PayloadTooLarge(InvalidInput):
    """The payload is larger than the configured limit."""

    def __init__(self, payload_bytes: int, max_payload_bytes: int) -> None:
        super().__init__(
            "payload", f"{payload_bytes} bytes exceeds the limit of {max_payload_bytes} bytes"
        )
        self.payload_bytes = payload_bytes
        self.max_payload_bytes = max_payload_bytes


class DependencyCycle(InvalidInput):
    """The dependencies form a cycle."""

    def __init__(self, cycle: list[str]) -> None:
        super().__init__("depends_on", "dependency cycle: " + " -> ".join(cycle))
        self.cycle = cycle


class UnknownDependency(InvalidInput):
    """A dependency names a job that does not exist."""

    def __init__(self, missing: list[str]) -> None:
        super().__init__("depends_on", "unknown job id(s): " + ", ".join(missing))
        self.missing = missing


class IdempotencyConflict(InvalidInput):
    """The idempotency key was already used for a different job."""

    def __init__(self, key: str, job_id: str) -> None:
        super().__init__(
            "idempotency_key", f"key {key!r} already used by job {job_id} with a different spec"
        )
        self.key = key
        self.job_id = job_id


class JobNotFound(JobHarnessError):
    """The job does not exist."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {job_id} not found", job_id=job_id)


class StaleLease(JobHarnessError):
    """The fencing token is not the job's current lease: the result is rejected."""

    def __init__(self, job_id: str, token: int, status: str) -> None:
        super().__init__(
            f"stale lease for job {job_id}: token {token} is not current (job is {status})",
            job_id=job_id,
            token=token,
            status=status,
        )


class InvalidTransition(JobHarnessError):
    """The job's status does not allow this operation."""

    def __init__(self, job_id: str, status: str, operation: str) -> None:
        super().__init__(
            f"cannot {operation} job {job_id}: it is {status}",
            job_id=job_id,
            status=status,
            operation=operation,
        )


class MigrationError(JobHarnessError):
    """A schema migration failed."""


class ConfigError(JobHarnessError):
    """The configuration is invalid."""


class ServiceError(JobHarnessError):
    """An embedded service could not be started, reached or stopped."""


class StoreUnavailable(JobHarnessError):
    """The PostgreSQL job store cannot be reached."""


class DispatchUnavailable(JobHarnessError):
    """The Redis dispatch index cannot be reached."""


class WorkerIdInUse(JobHarnessError):
    """A worker tried to register under the id of another live worker."""

    def __init__(self, worker_id: str, holder: str) -> None:
        super().__init__(f"worker id {worker_id!r} belongs to a live worker ({holder}); "
                         "refusing to take it over", worker_id=worker_id)
