"""Storm protection for proactive replacement (core/supervisor/storm.py): the budget per hour,
and the breaker judged by what flagged workers went on to do."""

from __future__ import annotations

import pytest

from core.supervisor.storm import StormGuard, StormLimits


def test_the_budget_allows_per_hour_replacements_in_any_sliding_hour() -> None:
    guard = StormGuard(StormLimits(per_hour=2))
    for t in (0.0, 100.0):
        assert guard.check(t) is None
        guard.replaced(t)
    assert guard.check(3599.0) == "budget"
    assert guard.spent == 2
    assert guard.check(3600.0) is None  # the first one left the hour
    assert guard.spent == 1


def test_mostly_false_flags_open_the_breaker_and_right_ones_close_it() -> None:
    guard = StormGuard(StormLimits(per_hour=100, window=4, min_false=3, horizon_s=10.0))
    for i in range(3):
        guard.watch(f"w{i}", 0.0)
    assert guard.check(9.9) is None  # not judged before the horizon
    assert guard.check(10.0) == "breaker"  # three held-back flags, none failed: false alarms
    assert (guard.open, guard.trips, guard.judged_false) == (True, 1, 3)
    # while open, the flags it holds back are still judged; real failures close it again
    guard.watch("w7", 11.0)
    guard.failed("w7")
    assert guard.open  # three false of four: still mostly false
    guard.watch("w8", 12.0)
    guard.failed("w8")
    assert not guard.open
    assert guard.check(13.0) is None
    assert (guard.judged_true, guard.trips) == (2, 1)


def test_a_failed_drain_counts_as_right_and_an_unwatched_failure_counts_as_nothing() -> None:
    guard = StormGuard(StormLimits(window=2, min_false=1, horizon_s=1.0))
    guard.failed("never-flagged")  # a reactive replacement of a worker nobody flagged
    assert guard.judged_true == 0
    guard.watch("w1", 0.0)
    guard.watch("w1", 0.5)  # flagged again: one watch, from the first flag
    assert guard.check(1.0) == "breaker"  # window 2, one false: a majority of one
    guard.drain_failed()
    assert guard.check(1.0) is None  # one right, one false: not a majority false
    assert guard.judged_false == 1


@pytest.mark.parametrize(("kwargs", "named"), [
    ({"per_hour": 0}, "--proactive-per-hour"),
    ({"window": 3, "min_false": 4}, "min_false"),
    ({"horizon_s": 0}, "--breaker-horizon-s"),
])
def test_bad_limits_are_refused_by_name(kwargs: dict[str, float], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        StormLimits(**kwargs)  # type: ignore[arg-type]


def test_the_fleet_wide_hold_needs_many_failing_together() -> None:
    guard = StormGuard(StormLimits())  # at least 8, and at least 5 % of the fleet
    assert not guard.fleetwide(6, 16)  # a drill's concurrent faults in a small fleet
    assert guard.fleetwide(8, 16)
    assert not guard.fleetwide(7, 160)
    assert guard.fleetwide(29, 160)  # the worst round of an overloaded host's soak
    assert not guard.fleetwide(40, 1000)
    assert guard.fleetwide(50, 1000)
    with pytest.raises(ValueError, match="fleet-wide hold"):
        StormLimits(fleet_min=1)
