from datetime import UTC, datetime

import pytest

from core.contract.keys import priority_band
from core.errors import InvalidInput, PayloadTooLarge, UnknownJobType
from core.jobs.model import JobSpec, JobStatus, SpecLimits, validate_spec
from core.settings import BUILTIN_JOB_TYPES

LIMITS = SpecLimits(known_job_types=BUILTIN_JOB_TYPES, max_payload_bytes=1024)


def test_valid_spec_serialises_payload_compactly() -> None:
    v = validate_spec(JobSpec(job_type="noop", payload={"a": [1, 2]}), LIMITS)
    assert v.payload_json == '{"a":[1,2]}'


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (JobSpec(job_type="noop", priority=0), "priority"),
        (JobSpec(job_type="noop", priority=6), "priority"),
        (JobSpec(job_type="noop", priority="3"), "priority"),  # type: ignore[arg-type]
        (JobSpec(job_type="noop", priority=True), "priority"),
        (JobSpec(job_type="noop", max_retries=-1), "max_retries"),
        (JobSpec(job_type="noop", timeout_s=0), "timeout_s"),
        (JobSpec(job_type="noop", timeout_s=float("nan")), "timeout_s"),
        (JobSpec(job_type="noop", delay_s=-1), "delay_s"),
        (JobSpec(job_type="noop", run_at=datetime(2030, 1, 1)), "run_at"),
        (JobSpec(job_type="noop", run_at=datetime(2030, 1, 1, tzinfo=UTC), delay_s=1), "run_at"),
        (JobSpec(job_type="noop", required_capability=""), "required_capability"),
        (JobSpec(job_type="noop", idempotency_key=""), "idempotency_key"),
        (JobSpec(job_type="noop", depends_on=("a", "a")), "depends_on"),
        (JobSpec(job_type="noop", ref="me", depends_on=("me",)), "depends_on"),
        (JobSpec(job_type="noop", payload=[1]), "payload"),  # type: ignore[arg-type]
        (JobSpec(job_type="noop", payload={"x": {1, 2}}), "payload"),
        (JobSpec(job_type="noop", payload={"x": float("inf")}), "payload"),
        (JobSpec(job_type=""), "job_type"),
        (JobSpec(job_type="noop", tenant=""), "tenant"),
        (JobSpec(job_type="noop", tenant="t" * 201), "tenant"),
        (JobSpec(job_type="noop", tenant="a\x00b"), "tenant"),
    ],
)
def test_bad_fields_are_named(spec: JobSpec, field: str) -> None:
    with pytest.raises(InvalidInput) as info:
        validate_spec(spec, LIMITS)
    assert info.value.field == field
    assert field in str(info.value)


def test_unknown_job_type_lists_known_ones() -> None:
    with pytest.raises(UnknownJobType, match="noop"):
        validate_spec(JobSpec(job_type="nope"), LIMITS)


def test_oversized_payload_reports_sizes() -> None:
    with pytest.raises(PayloadTooLarge) as info:
        validate_spec(JobSpec(job_type="noop", payload={"x": "y" * 2000}), LIMITS)
    assert info.value.max_payload_bytes == 1024
    assert info.value.payload_bytes > 1024


def test_not_a_spec() -> None:
    with pytest.raises(InvalidInput, match="JobSpec"):
        validate_spec({"job_type": "noop"}, LIMITS)


@pytest.mark.parametrize(("priority", "band"), [(1, "low"), (2, "medium"), (3, "medium"),
                                                (4, "high"), (5, "high")])
def test_priority_bands_follow_the_seed(priority: int, band: str) -> None:
    assert priority_band(priority) == band


def test_terminal_statuses() -> None:
    assert {s for s in JobStatus if s.terminal} == {
        JobStatus.COMPLETED, JobStatus.DEAD, JobStatus.CANCELLED}
