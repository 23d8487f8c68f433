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


def test_metrics_show_every_type_and_the_busiest_tenants_and_sum_the_rest() -> None:
    from core.api.metrics import MAX_TENANT_SERIES, StoreCollector

    store = StoreCollector()
    store.limits = [{"scope": "job_type", "name": "sleep", "max_running": 3, "running": 1,
                     "waits": 0, "enforced": True}]
    store.limits += [{"scope": "tenant", "name": f"t{i}", "max_running": 2, "running": i % 3,
                      "waits": i, "enforced": True} for i in range(100_000)]
    rows = store._limit_rows()
    assert len(rows) == 1 + MAX_TENANT_SERIES + 1
    assert rows[0]["name"] == "sleep"
    shown = rows[1:-1]
    assert all(r["running"] == 2 for r in shown)  # the busiest first
    other = rows[-1]
    assert other["name"] == "(other tenants)"
    total = sum(i % 3 for i in range(100_000))
    assert other["running"] + sum(r["running"] for r in shown) == total
    families = {m.name: len(m.samples) for m in store._limits()}
    assert max(families.values()) <= MAX_TENANT_SERIES + 2


def test_the_scrape_counts_every_job_status() -> None:
    """metrics_job_counts writes the statuses out (one planned branch each): none missing."""
    from core.jobs.model import JobStatus
    from core.store.queries import q

    sql = q("metrics_job_counts")
    assert all(f"status = '{s.value}'" in sql for s in JobStatus)
