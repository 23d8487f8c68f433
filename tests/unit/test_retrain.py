"""`jobharness predictor retrain` on small run folders written here (the data of real runs in
the same shape): the frozen test set is kept apart, the card records it, and the command says
whether to ship."""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from core.contract import runfolder
from loadtests.cli import main

T0 = datetime(2026, 12, 1, tzinfo=UTC)


def write_run(folder: Path, seed: int, *, workers: int = 8, leaks: int = 3,
              length_s: int = 150) -> Path:
    """A run where `leaks` workers leak memory from a random moment and die 40 s later, and
    the rest stay healthy to the end: one health sample per worker per second."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    start = T0 + timedelta(hours=seed)
    samples, rows = [], []
    for w in range(workers):
        wid = f"sup-{w:03d}-g0"
        leak_from = float(rng.uniform(20, length_s - 60)) if w < leaks else None
        end = int(leak_from + 40) if leak_from is not None else length_s
        for t in range(end):
            slope = 8.0 if leak_from is not None and t >= leak_from else 0.0
            rss = 40 + rng.normal(0, 0.3) + slope * (t - (leak_from or 0)) * (slope > 0)
            samples.append({"worker_id": wid, "sampled_at": (start + timedelta(seconds=t))
                            .isoformat(), "rss_bytes": int(rss * 2**20),
                            "cpu_percent": 20 + rng.normal(0, 2), "loop_lag_ms": 2.0,
                            "in_flight": 1, "completed": 5 * t, "failed": 0,
                            "duration_p99_ms": 30.0})
        stopped = (start + timedelta(seconds=end)).isoformat()
        rows.append({"id": wid, "status": "FAILED" if leak_from is not None else "STOPPED",
                     "stopped_at": stopped, "failure_reason": "process exited with code 137"
                     if leak_from is not None else ""})
    for name, data in ((runfolder.WORKER_HEALTH, samples), (runfolder.WORKERS, rows)):
        with open(folder / name, "w", newline="") as fh:
            out = csv.DictWriter(fh, fieldnames=list(data[0]))
            out.writeheader()
            out.writerows(data)
    (folder / runfolder.VERDICT).write_text(json.dumps({"drill": {"journal": []}}))
    return folder


def test_retrain_trains_tests_once_and_says_whether_to_ship(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = [write_run(tmp_path / f"degrading-{i}", seed=i) for i in range(4)]
    test = write_run(tmp_path / "degrading-test", seed=9)
    out = tmp_path / "m.skops"
    assert main(["predictor", "retrain", *map(str, runs), "--test", str(test), "--out",
                 str(out), "--k", "3"]) == 0
    printed = capsys.readouterr().out
    assert "ship it: " in printed
    card = json.loads(out.with_suffix(".card.json").read_text())
    ft = card["frozen_test"]
    assert [s["run"] for s in ft["sources"]] == ["degrading-test"]
    assert set(ft["scores"]) == {"new", "current", "hand_rule"}
    assert ft["scores"]["new"]["events"]["gradual"]["failures"] == 3
    assert ft["ship"] == ("ship it: yes" in printed)
    for res in ft["scores"].values():  # rows of `failing` at each scorer's action threshold
        at = res["at_threshold"]
        assert 0 <= at["recall"] <= 1
        assert at["recall_ci"][0] <= at["recall"] <= at["recall_ci"][1]
    assert card["baselines"]["runs"] == ["degrading-2", "degrading-3"]
    text = out.with_suffix(".md").read_text()
    assert "## Frozen test set (scored once)" in text
    assert "## Against the baselines" in text
    assert "| row precision | row recall |" in text.split("## Frozen test set")[1]
    # evaluate gives the same rows at the threshold, for the model and the hand rule
    assert main(["predictor", "evaluate", str(out), str(test), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["at_threshold"] == ft["scores"]["new"]["at_threshold"]
    assert result["hand_rule"]["at_threshold"] == ft["scores"]["hand_rule"]["at_threshold"]
    # the test set is used once: evaluating the new model on it again is allowed, on a
    # training run it is refused
    assert main(["predictor", "evaluate", str(out), str(runs[0])]) == 1
    assert "trained" in capsys.readouterr().err


def test_retrain_refuses_a_test_set_drawn_from_training_and_too_few_runs(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = [write_run(tmp_path / f"r{i}", seed=i) for i in range(3)]
    out = tmp_path / "m.skops"
    assert main(["predictor", "retrain", *map(str, runs), "--test", str(runs[2]),
                 "--current", "none", "--out", str(out)]) == 1
    assert "test runs also in training" in capsys.readouterr().err
    assert main(["predictor", "retrain", *map(str, runs[:2]), "--test", str(runs[2]),
                 "--current", "none", "--out", str(out)]) == 1
    assert "at least three" in capsys.readouterr().err
    assert main(["predictor", "retrain", *map(str, runs), "--test", str(runs[2]),
                 "--collect", "99", "--out", str(out)]) == 1
    assert "--collect" in capsys.readouterr().err
    assert not out.exists()  # nothing written
