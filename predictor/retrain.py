"""`jobharness predictor retrain`: from run folders (given, or collected here by running a
drill N times) to a model file, its card, and a recommendation whether to ship it.

Steps: collect the runs (each a `jobharness run degrading --drill ... --seed S` in a child
process), build the dataset, train with nested validation and the baselines (predictor.train),
score the new model, the current one and the hand rule once on a frozen test set (run folders
that took no part in training: refused otherwise), write the model and its card, and say
whether it should replace the current one: only if it beats the hand rule on the test set and
does not score below the current model there.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from core.contract import runfolder
from predictor.baselines import HAND_RULE_K, HAND_RULE_TEXT, at_threshold, hand_rule_scores
from predictor.dataset import DatasetError, file_hash, used_in_training
from predictor.model import LoadedModel
from predictor.policy import Policy
from predictor.train import evaluate, event_f1, event_metrics, trainable

# what a run of the default drill costs here, for the first estimate (later ones measure)
RUN_ESTIMATE_S = 240.0


@dataclass(frozen=True, kw_only=True)
class Collect:
    runs: int
    seed: int
    drill: str
    out: Path
    scenario: str = "degrading"


def collect(plan: Collect, step: Callable[[int, str, float], None]) -> list[Path]:
    """Run the drill `plan.runs` times (seeds seed, seed + 1, ...) and return the run folders
    made. `step(runs_done, text, seconds_left)` is told before each run, with an estimate."""
    made: list[Path] = []
    took: list[float] = []
    for i in range(plan.runs):
        seed = plan.seed + i
        left = (sum(took) / len(took) if took else RUN_ESTIMATE_S) * (plan.runs - i)
        step(i, f"run {i + 1} of {plan.runs} (seed {seed})", left)
        into = plan.out / f"seed-{seed}"
        into.mkdir(parents=True, exist_ok=True)
        before = set(into.iterdir())
        t0 = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "loadtests.cli", "run", plan.scenario, "--drill",
             plan.drill, "--seed", str(seed), "--out", str(into)],
            capture_output=True, text=True)
        took.append(time.monotonic() - t0)
        folders = [f for f in set(into.iterdir()) - before
                   if (f / runfolder.WORKER_HEALTH).is_file()]
        if not folders:  # a run whose verdict failed still has its data; no data is an error
            tail = (done.stderr or done.stdout)[-1500:]
            raise DatasetError(f"run with seed {seed} left no run folder with health samples "
                               f"in {into} (exit {done.returncode}):\n{tail}")
        made += sorted(folders)
    return made


def check_test_set(train_runs: list[Path], test_runs: list[Path]) -> None:
    """The frozen test set must share no run with the training runs (by name or data)."""
    if not test_runs:
        raise DatasetError("give a frozen test set (--test RUN ...): run folders never used "
                           "in training, scored once")
    sources = build_sources(train_runs)
    overlap = used_in_training({"sources": sources}, test_runs)
    if overlap:
        raise DatasetError(f"test runs also in training: {', '.join(overlap)}")


def build_sources(runs: list[Path]) -> list[dict[str, str]]:
    return [{"run": r.name, runfolder.WORKER_HEALTH: file_hash(r / runfolder.WORKER_HEALTH)}
            for r in runs if (r / runfolder.WORKER_HEALTH).is_file()]


def judge(test: pd.DataFrame, horizon_s: float, *, new: tuple[Any, Policy],
          current: LoadedModel | None) -> dict[str, Any]:
    """The new model, the current one (at its own policy) and the hand rule on the test rows."""
    out: dict[str, Any] = {}
    model, policy = new
    out["new"] = evaluate(model, test, policy, horizon_s)
    if current is not None:
        out["current"] = evaluate(current.pipeline, test,
                                  Policy(threshold=current.threshold, k=current.k, holdout=0),
                                  horizon_s)
    hand = hand_rule_scores(test)
    out["hand_rule"] = {"events": event_metrics(
        hand, Policy(threshold=0.5, k=HAND_RULE_K, holdout=0), horizon_s),
        "at_threshold": at_threshold(trainable(hand), 0.5), "rule": HAND_RULE_TEXT}
    for res in out.values():
        res["event_f1"] = round(event_f1(res["events"]), 3)
    return out


def decide(scores: dict[str, Any]) -> tuple[bool, list[str]]:
    """Ship the new model only if it beats the hand rule on the test set and does not score
    below the current model there; the reasons either way."""
    new, hand = scores["new"]["event_f1"], scores["hand_rule"]["event_f1"]
    reasons = [f"event F1 on the test set: new {new:.3f}, hand rule {hand:.3f}"
               + (f", current {scores['current']['event_f1']:.3f}" if "current" in scores
                  else "")]
    ship = True
    if new <= hand:
        ship = False
        reasons.append("the new model does not beat the hand rule")
    if "current" in scores and new < scores["current"]["event_f1"]:
        ship = False
        reasons.append("the new model scores below the current one")
    return ship, reasons
