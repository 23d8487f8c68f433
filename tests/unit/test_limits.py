"""Limit validation and the value the dispatch scripts read (pure logic)."""

from __future__ import annotations

import math

import pytest

from core.errors import InvalidInput
from core.jobs.limits import Limit, validate_limit

TYPES = frozenset({"noop", "sleep"})


def test_a_valid_limit_is_normalised_and_mirrored_in_script_order() -> None:
    lim = validate_limit(Limit(scope="tenant", name="acme", max_running=3, rate_per_s=2,
                               burst=5, weight=4), TYPES)
    assert lim.rate_per_s == 2.0
    assert isinstance(lim.rate_per_s, float)
    assert lim.mirror == "3,2.0,5,4"
    assert Limit(scope="job_type", name="noop", rate_per_s=0.5).mirror == ",0.5,,"
    assert lim.field == "tenant\0acme"


@pytest.mark.parametrize(("limit", "field"), [
    (Limit(scope="queue", name="x", max_running=1), "scope"),
    (Limit(scope="tenant", name="", max_running=1), "name"),
    (Limit(scope="tenant", name="x" * 201, max_running=1), "name"),
    (Limit(scope="tenant", name="a\0b", max_running=1), "name"),
    (Limit(scope="job_type", name="nosuch", max_running=1), "name"),
    (Limit(scope="tenant", name="t", max_running=0), "max_running"),
    (Limit(scope="tenant", name="t", max_running=True), "max_running"),
    (Limit(scope="tenant", name="t", max_running=2.5), "max_running"),  # type: ignore[arg-type]
    (Limit(scope="tenant", name="t", rate_per_s=0), "rate_per_s"),
    (Limit(scope="tenant", name="t", rate_per_s=math.inf), "rate_per_s"),
    (Limit(scope="tenant", name="t", rate_per_s=math.nan), "rate_per_s"),
    (Limit(scope="tenant", name="t", max_running=1, burst=2), "burst"),
    (Limit(scope="tenant", name="t", rate_per_s=1, burst=0), "burst"),
    (Limit(scope="tenant", name="t", weight=0), "weight"),
    (Limit(scope="tenant", name="t", weight=1001), "weight"),
    (Limit(scope="job_type", name="noop", weight=2), "weight"),
    (Limit(scope="tenant", name="t"), "limit"),
])
def test_bad_limits_name_the_field(limit: Limit, field: str) -> None:
    with pytest.raises(InvalidInput) as err:
        validate_limit(limit, TYPES)
    assert err.value.field == field
