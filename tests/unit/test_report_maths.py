"""The figures every report, benchmark and verdict quotes: the nearest-rank percentile, exact
at the sizes runs have (not "p99.9 = max" at 1,000 samples), and `report compare`'s tests,
which must flag a real change and leave noise alone."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from core.contract.figures import percentile
from reports.compare import latency_row, proportion_row


def nearest_rank(values: list[float], pct: float) -> float:
    """The definition, in integers: the smallest value with at least pct % at or below it
    (pct given in tenths of a percent to stay exact)."""
    ordered = sorted(values)
    tenths = round(pct * 10)
    rank = max(1, -(-tenths * len(ordered) // 1000))
    return ordered[rank - 1]


@pytest.mark.parametrize("n", [1, 2, 3, 10, 999, 1000, 1001, 2000, 10_000])
@pytest.mark.parametrize("pct", [0, 1, 50, 90, 95, 99, 99.9, 100])
def test_percentile_is_the_integer_nearest_rank(n: int, pct: float) -> None:
    values = [float(v) for v in range(1, n + 1)]  # value i is rank i
    assert percentile(values, pct) == nearest_rank(values, pct)


def test_p999_of_a_thousand_is_not_the_maximum() -> None:
    values = [float(v) for v in range(1, 1001)]
    assert math.ceil(99.9 / 100 * 1000) == 1000  # what binary floating point would use
    assert percentile(values, 99.9) == 999.0
    assert percentile([float(v) for v in range(1, 2001)], 99.9) == 1998.0
    assert percentile([float(v) for v in range(1, 10_001)], 99.9) == 9990.0
    assert percentile(list(reversed(values)), 50) == 500.0  # order of input does not matter


def test_percentile_edges() -> None:
    assert percentile([], 50) is None
    assert percentile([7.0], 0) == percentile([7.0], 100) == 7.0
    with pytest.raises(ValueError, match="between 0 and 100"):
        percentile([1.0], 101)


def test_compare_flags_a_real_slowdown_and_not_two_samples_of_one_distribution() -> None:
    rng = np.random.default_rng(3)
    base = rng.lognormal(2.0, 0.5, 500)
    same = rng.lognormal(2.0, 0.5, 500)  # independent, same distribution
    slower = base * 1.3
    for pct in (50, 99):
        assert not latency_row("x", base, same, pct, 0.05)["regression"]
    assert latency_row("x", base, slower, 50, 0.05)["regression"]
    # a real but small worsening stays below the minimum change
    assert not latency_row("x", base, base * 1.03, 50, 0.05)["regression"]


def test_compare_error_rate_needs_significance_and_the_minimum_change() -> None:
    assert proportion_row("e", 10, 1000, 40, 1000, 0.05)["regression"]  # 1 % -> 4 %
    assert not proportion_row("e", 10, 1000, 12, 1000, 0.05)["regression"]  # noise
    assert not proportion_row("e", 0, 1000, 0, 1000, 0.05)["regression"]
    # significant at a million requests, but 0.05 points: under the 0.1-point floor
    assert not proportion_row("e", 10_000, 1_000_000, 10_500, 1_000_000, 0.05)["regression"]
    row = proportion_row("e", 10, 1000, 40, 1000, 0.05)
    assert row["counts"] == [10, 40]
    assert row["change_pct"] == 300.0


def test_accepted_jobs_missing_names_the_jobs_the_api_acknowledged_but_lost(
        tmp_path: Path) -> None:
    """The client-side half of invariant 2, planted: an id Locust saw acknowledged (201) that
    the exported jobs table does not hold."""
    from core.contract import runfolder
    from loadtests.verdict import missing_accepted

    (tmp_path / runfolder.RAW).mkdir()
    (tmp_path / runfolder.RAW / "accepted-1.txt").write_text("a\nb\n")
    (tmp_path / runfolder.RAW / "accepted-2.txt").write_text("c\n")
    (tmp_path / runfolder.JOBS).write_text("id,status\na,COMPLETED\nc,DEAD\n")
    check = missing_accepted(tmp_path)
    assert (check["violations"], check["examples"], check["ok"]) == (1, ["b"], False)
    (tmp_path / runfolder.JOBS).write_text("id,status\na,COMPLETED\nb,PENDING\nc,DEAD\n")
    assert missing_accepted(tmp_path)["ok"]
