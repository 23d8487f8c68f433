"""A run with a shipped worker-health policy (the default, and the learnt model): the
supervisor scores every worker, logs every verdict into the run folder, and the report shows
the predictor's figure and activity."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pandas as pd
import pytest

from core.settings import Settings
from loadtests.cli import main
from predictor.dataset import fatal_onsets, samples_frame
from predictor.shipped import load_policy
from tests.e2e.test_run import run_args

LEAK_DRILL = """
name: one-leak
description: one worker leaks memory fast; the run lasts long enough to see it
settings: {heartbeat_interval_s: 1, heartbeat_ttl_s: 4, lease_s: 4}
method:
  - {action: degrade_workers, at_s: 1, count: 1, mode: leak, ramp_s: 20, limit_mb: 320}
  - {action: resume_workers, at_s: 22}
settle_s: 10
"""


@pytest.mark.parametrize("policy", ["default", "learnt"])
def test_a_run_with_a_shipped_policy_logs_verdicts_and_reports_them(
    server_settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str], policy: str
) -> None:
    drill = tmp_path / "one-leak.yaml"
    drill.write_text(LEAK_DRILL)
    out = tmp_path / "runs"
    code = main(run_args(server_settings, out, "drill", "--drill", str(drill),
                         "--predictor", policy))
    verdict = json.loads(capsys.readouterr().out)
    assert code == 0, verdict["breaches"]
    (folder,) = out.iterdir()
    with open(folder / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    meta = json.loads((folder / "predictions.json").read_text())
    model = load_policy(policy)
    assert (meta["threshold"], meta["k"]) == (model.threshold, model.k)
    (fault,) = [e for e in verdict["drill"]["journal"] if e["name"] == "degrade_workers"]
    (leaky,) = [f["worker_id"] for f in fault["result"]["degraded"]]
    # the journal says when the fault began, within the leaky worker's sampled life: the
    # onset its rows are labelled `failing` from
    assert fatal_onsets(verdict) == {leaky: fault["result"]["degraded"][0]["injected_at"]}
    health = samples_frame(pd.read_csv(folder / "worker_health.csv"))
    lived = health.loc[health["worker_id"] == leaky, "t"]
    assert lived.min() < fatal_onsets(verdict)[leaky] < lived.max()
    judged = {r["worker_id"] for r in rows if r["verdict"] not in ("", "new")}
    assert len(judged) >= 4  # every worker of the smoke run was scored
    # the leaking worker is flagged; nobody else is replaced on a prediction
    assert any(r["worker_id"] == leaky and r["verdict"] == "failing" for r in rows)
    assert {r["worker_id"] for r in rows if r["action"] == "replace"} <= {leaky}
    report = folder / "report"
    assert (report / "predictor.png").stat().st_size > 0
    summary = json.loads((report / "summary.json").read_text())
    assert summary["predictor"]["scores"] == sum(r["verdict"] != "" for r in rows)
    assert summary["predictor"]["threshold"] == model.threshold
