"""False alarms measured: runs with no fault at all (`jobharness run fleet-soak --predictor
default`), where every firing of the policy is a false one.

Per run: the worker-hours the fleet lived (registration to stop or last heartbeat); the
workers the policy fired on (`fire`, in the acted-on arm) and those it only flagged
(`holdout`: scored, never acted on; flagged is as false as fired); of its firings, the workers
the supervisor did replace and those its storm guards held back (`fleetwide`, `budget`,
`breaker`, `deferred`: logged in `predictions.csv`); the workers that failed all the same (a
no-fault run should have none; they are reported, not hidden); and the rounds the firings came
in, with how many workers scored `failing` in each (a crowded round is a busy host, not sick
workers). Two rates, each per 100 worker-hours with its exact one-sided 95 % Poisson upper
bound, pooled over runs: false replacements (replaced, or flagged in the hold-out arm), the
target's measure, and the policy's false firings before any guard. With none in 300
worker-hours the bound is 1 per 100, the target.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from core.contract import runfolder
from predictor.dataset import (
    failing_per_round,
    file_hash,
    first_firings,
    read_predictions,
    worker_hours,
)
from predictor.train import poisson_upper95

HELD = ("fleetwide", "budget", "breaker", "deferred")  # a firing the supervisor held back


class SoakError(ValueError):
    """A run folder cannot count as a no-fault soak."""


def soak_run(run_dir: Path) -> dict[str, Any]:
    """One no-fault run's worker-hours and firings (SoakError when a fault was injected or
    no predictor ran)."""
    if not (run_dir / "predictions.json").is_file():
        raise SoakError(f"{run_dir.name}: no predictions.json (run it with --predictor)")
    verdict = json.loads((run_dir / runfolder.VERDICT).read_text())
    drill = verdict.get("drill") or {}
    if isinstance(drill, dict) and drill.get("faults"):
        raise SoakError(f"{run_dir.name}: drill {drill.get('name')!r} injected faults; a soak "
                        "counts false alarms only where nothing was wrong")
    meta = json.loads((run_dir / "predictions.json").read_text())
    workers = pd.read_csv(run_dir / "workers.csv", dtype=str, keep_default_na=False)
    hours = float(worker_hours(workers).sum())
    failed = workers[workers["status"] == "FAILED"]
    preds = read_predictions(run_dir)
    firings = first_firings(preds)
    actions = preds.dropna(subset=["action"])
    replaced = set(actions.loc[actions["action"] == "replace", "worker_id"])
    held = actions[actions["action"].isin(HELD) & ~actions["worker_id"].isin(replaced)]
    held_by = held.drop_duplicates("worker_id")["action"].value_counts()
    return {
        "run": run_dir.name, "model_trained_at": meta.get("trained_at"),
        "threshold": meta.get("threshold"), "k": meta.get("k"),
        "workers": len(workers), "worker_hours": round(hours, 2),
        "fired": int((firings["action"] == "fire").sum()),
        "flagged_holdout": int((firings["action"] == "holdout").sum()),
        "replaced": len(replaced),
        "held": {a: int(held_by.get(a, 0)) for a in HELD if held_by.get(a, 0)},
        "failed_anyway": len(failed),
        "failure_reasons": sorted(set(failed["failure_reason"])),
        **firing_rounds(preds, firings),
        "worker_health.csv": file_hash(run_dir / "worker_health.csv"),
    }


def firing_rounds(preds: pd.DataFrame, firings: pd.DataFrame) -> dict[str, Any]:
    """The most workers scoring `failing` in one round, and each round with a first firing
    (`firings`): its time, how many workers scored `failing` in it, how many were fired on."""
    per_round = failing_per_round(preds)
    rounds = [{"t": float(t), "failing": int(per_round.get(t, 0)), "fired": int(n)}
              for t, n in firings.groupby("t").size().items()]
    return {"worst_round_failing": int(per_round.max()) if len(per_round) else 0,
            "firing_rounds": rounds}


def _rate(n: int, hours: float) -> tuple[float | None, float | None]:
    if not hours:
        return None, None
    return round(100 * n / hours, 2), round(100 * poisson_upper95(n) / hours, 2)


def summarize(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    hours = sum(r["worker_hours"] for r in runs)
    false = sum(r["fired"] + r["flagged_holdout"] for r in runs)
    replaced = sum(r.get("replaced", r["fired"]) + r["flagged_holdout"] for r in runs)
    rate, upper = _rate(false, hours)
    rep_rate, rep_upper = _rate(replaced, hours)
    return {
        "runs": len(runs), "worker_hours": round(hours, 1), "false_firings": false,
        "false_per_100_worker_hours": rate, "false_per_100_upper95": upper,
        "false_replacements": replaced,
        "replacements_per_100_worker_hours": rep_rate,
        "replacements_per_100_upper95": rep_upper,
        "failed_anyway": sum(r["failed_anyway"] for r in runs),
        "target_met": rep_upper is not None and rep_upper <= 1.0,
    }


def held_text(run: dict[str, Any]) -> str:
    """The firings a run's storm guards held back, by kind ("2 fleetwide, 1 budget")."""
    return ", ".join(f"{n} {a}" for a, n in run.get("held", {}).items())


def soak_lines(summary: dict[str, Any]) -> list[str]:
    """What `predictor soak` prints: a line per run, then the two pooled rates."""
    out = []
    for r in summary["per_run"]:
        held = held_text(r) or "none"
        crowded = "; ".join(f"{x['fired']} in a round with {x['failing']} failing"
                            for x in r.get("firing_rounds", []))
        out.append(f"{r['run']}: {r['workers']} workers, {r['worker_hours']} worker-hours, "
                   f"fired {r['fired']} (replaced {r.get('replaced', '?')}, held back: {held}),"
                   f" flagged (hold-out) {r['flagged_holdout']}, failed anyway "
                   f"{r['failed_anyway']}; most failing in one round "
                   f"{r.get('worst_round_failing', '?')}" + (f"; firings: {crowded}"
                                                               if crowded else ""))
    s = summary
    out.append(f"false replacements {s['false_replacements']} in {s['worker_hours']} "
               f"worker-hours: {s['replacements_per_100_worker_hours']} per 100 (95 % upper "
               f"bound {s['replacements_per_100_upper95']}; target <= 1: "
               f"{'met' if s['target_met'] else 'not met'})")
    out.append(f"the policy's false firings (before the storm guards) {s['false_firings']}: "
               f"{s['false_per_100_worker_hours']} per 100 (95 % upper bound "
               f"{s['false_per_100_upper95']})")
    return out
