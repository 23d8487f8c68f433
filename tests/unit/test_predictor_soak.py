"""The soak's count of false alarms on hand-made run folders (pure file logic: no stores)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from predictor.soak import SoakError, soak_lines, soak_run, summarize


def table(path: Path, rows: list[dict[str, object]]) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def make_run(root: Path, name: str, *, fired: int, faults: list[object] | None = None,
             held: dict[int, str] | None = None) -> Path:
    held = held or {}
    d = root / name
    d.mkdir()
    (d / "predictions.json").write_text(json.dumps({"trained_at": "T", "threshold": 0.9,
                                                     "k": 5, "holdout": 0.1}))
    (d / "verdict.json").write_text(json.dumps(
        {"drill": {"name": "x", "faults": faults}} if faults is not None else {"drill": None}))
    table(d / "workers.csv", [
        {"id": f"w{i}", "status": "FAILED" if i == 0 else "ACTIVE",
         "failure_reason": "process killed by signal 9" if i == 0 else "",
         "registered_at": "2026-12-02 00:00:00+00", "stopped_at": "",
         "last_heartbeat_at": "2026-12-02 01:00:00+00"} for i in range(10)])
    rows: list[dict[str, object]] = [
        {"t": 1.0, "worker_id": f"w{i}", "verdict": "failing", "action": "fire"}
        for i in range(fired)]
    rows += [{"t": 1.0, "worker_id": f"w{i}", "verdict": "", "action": held.get(i, "replace")}
             for i in range(fired)]  # what the supervisor did about each firing
    rows += [{"t": 1.0, "worker_id": "w9", "verdict": "failing", "action": "holdout"},
             {"t": 2.0, "worker_id": "w9", "verdict": "failing", "action": "holdout"},
             {"t": 2.0, "worker_id": "w8", "verdict": "healthy", "action": ""}]
    table(d / "predictions.csv", rows)
    (d / "worker_health.csv").write_text("worker_id\n")
    return d


def test_every_firing_in_a_run_without_faults_is_false(tmp_path: Path) -> None:
    r = soak_run(make_run(tmp_path, "a", fired=2))
    assert (r["workers"], r["worker_hours"]) == (10, 10.0)
    assert (r["fired"], r["flagged_holdout"], r["failed_anyway"]) == (2, 1, 1)
    assert (r["replaced"], r["held"]) == (2, {})
    s = summarize([r, soak_run(make_run(tmp_path, "b", fired=0))])
    assert (s["worker_hours"], s["false_firings"], s["false_replacements"]) == (20.0, 4, 4)
    assert s["replacements_per_100_worker_hours"] == 20.0
    assert s["replacements_per_100_upper95"] == pytest.approx(100 * 9.154 / 20, abs=0.1)
    assert s["target_met"] is False


def test_firings_the_supervisor_held_back_are_not_replacements(tmp_path: Path) -> None:
    r = soak_run(make_run(tmp_path, "a", fired=4, held={0: "fleetwide", 1: "fleetwide",
                                                        2: "budget"}))
    assert (r["fired"], r["replaced"], r["held"]) == (4, 1, {"fleetwide": 2, "budget": 1})
    # the round of the firings had 4 acted-on workers and the hold-out worker failing
    assert r["worst_round_failing"] == 5
    assert r["firing_rounds"] == [{"t": 1.0, "failing": 5, "fired": 5}]
    s = summarize([r])
    assert (s["false_firings"], s["false_replacements"]) == (5, 2)
    lines = soak_lines({**s, "per_run": [r]})
    assert "held back: 2 fleetwide, 1 budget" in lines[0]
    assert "5 in a round with 5 failing" in lines[0]
    assert lines[1].startswith("false replacements 2 in 10.0 worker-hours")


def test_none_in_300_worker_hours_meets_the_target() -> None:
    runs = [{"worker_hours": 100.0, "fired": 0, "flagged_holdout": 0, "failed_anyway": 0}] * 3
    s = summarize(runs)
    assert s["false_per_100_upper95"] == pytest.approx(1.0, abs=0.01)
    assert s["target_met"] is True


def test_a_run_with_faults_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(SoakError, match="drill 'x' injected faults"):
        soak_run(make_run(tmp_path, "faulted", fired=0, faults=[{"name": "kill_workers"}]))
