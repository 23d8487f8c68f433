"""Scheduling limits as values: per job type and per tenant, `max_running` and `rate_per_s`
(with `burst`); per tenant a fair-share `weight`. Validation names the first bad field.
`core.service.limits` stores them in PostgreSQL and mirrors them into Redis."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from core.contract.keys import limit_field
from core.errors import InvalidInput
from core.jobs.model import check_text

SCOPES = ("job_type", "tenant")
MAX_RUNNING_LIMIT = 1_000_000
MAX_RATE = 1_000_000.0
# one start per 1,000 s: below it a rate limit blocks its jobs for good in practice (a
# bucket refilling once a month), which is a typo, not a limit
MIN_RATE = 0.001
MAX_WEIGHT = 1000


@dataclass(frozen=True, kw_only=True)
class Limit:
    scope: str  # "job_type" or "tenant"
    name: str
    max_running: int | None = None
    rate_per_s: float | None = None
    burst: int | None = None  # tokens a rate limit may save up; None: max(1, rate)
    weight: int | None = None  # tenants only: share of a band, relative to other tenants

    @property
    def field(self) -> str:
        return limit_field(self.scope, self.name)

    @property
    def mirror(self) -> str:
        """The value the dispatch scripts read: "max,rate,burst,weight", empty when unset."""
        parts = (self.max_running, self.rate_per_s, self.burst, self.weight)
        return ",".join("" if v is None else repr(v) for v in parts)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _positive_int(field: str, value: Any, high: int) -> None:
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high
    ):
        raise InvalidInput(field, f"must be an integer from 1 to {high} or null, got {value!r}")


def validate_limit(limit: Limit, known_job_types: frozenset[str]) -> Limit:
    """Check every field; raise an error naming the first bad one."""
    if limit.scope not in SCOPES:
        raise InvalidInput("scope", f"must be one of {', '.join(SCOPES)}, got {limit.scope!r}")
    if not isinstance(limit.name, str) or not 0 < len(limit.name) <= 200:
        raise InvalidInput("name", "must be a string of 1 to 200 characters")
    check_text("name", limit.name)
    if limit.scope == "job_type" and limit.name not in known_job_types:
        raise InvalidInput("name", f"unknown job type {limit.name!r} "
                                   f"(known: {', '.join(sorted(known_job_types))})")
    _positive_int("max_running", limit.max_running, MAX_RUNNING_LIMIT)
    rate = limit.rate_per_s
    if rate is not None and (
        isinstance(rate, bool) or not isinstance(rate, int | float) or not math.isfinite(rate)
        or not MIN_RATE <= rate <= MAX_RATE
    ):
        raise InvalidInput("rate_per_s", f"must be a number from {MIN_RATE:g} to {MAX_RATE:g} "
                                         f"(jobs started per second) or null, got {rate!r}")
    _positive_int("burst", limit.burst, MAX_RUNNING_LIMIT)
    if limit.burst is not None and rate is None:
        raise InvalidInput("burst", "applies to a rate limit: give rate_per_s too")
    _positive_int("weight", limit.weight, MAX_WEIGHT)
    if limit.weight is not None and limit.scope != "tenant":
        raise InvalidInput("weight", "only tenants have a fair-share weight")
    if limit.max_running is None and rate is None and limit.weight is None:
        raise InvalidInput("limit", "sets nothing: give max_running, rate_per_s or weight "
                                    "(or clear the limit)")
    return Limit(scope=limit.scope, name=limit.name, max_running=limit.max_running,
                 rate_per_s=None if rate is None else float(rate), burst=limit.burst,
                 weight=limit.weight)
