"""False alarms measured: runs with no fault at all (`jobharness run fleet-soak --predictor
default`), where every firing of the policy is a false one.

Per run: the worker-hours the fleet lived (registration to stop or last heartbeat), the
workers the live supervisor replaced on a prediction (`fire`) and those it only flagged
(`holdout`: scored, never acted on; flagged is as false as fired), and the workers that failed
all the same (a no-fault run should have none; they are reported, not hidden). The rate is
false firings per 100 worker-hours with its exact one-sided 95 % Poisson upper bound, pooled
over runs: with none in 300 worker-hours the bound is 1 per 100, the target.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from core.contract import runfolder
from predictor.dataset import file_hash, first_firings, worker_hours
from predictor.train import poisson_upper95


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
    acted = first_firings(run_dir)
    failed = workers[workers["status"] == "FAILED"]
    return {
        "run": run_dir.name, "model_trained_at": meta.get("trained_at"),
        "threshold": meta.get("threshold"), "k": meta.get("k"),
        "workers": len(workers), "worker_hours": round(hours, 2),
        "fired": sum(1 for a in acted.values() if a == "fire"),
        "flagged_holdout": sum(1 for a in acted.values() if a == "holdout"),
        "failed_anyway": len(failed),
        "failure_reasons": sorted(set(failed["failure_reason"])),
        "worker_health.csv": file_hash(run_dir / "worker_health.csv"),
    }


def summarize(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    hours = sum(r["worker_hours"] for r in runs)
    false = sum(r["fired"] + r["flagged_holdout"] for r in runs)
    return {
        "runs": len(runs), "worker_hours": round(hours, 1), "false_firings": false,
        "false_per_100_worker_hours": round(100 * false / hours, 2) if hours else None,
        "false_per_100_upper95": round(100 * poisson_upper95(false) / hours, 2)
        if hours else None,
        "failed_anyway": sum(r["failed_anyway"] for r in runs),
        "target_met": bool(hours) and 100 * poisson_upper95(false) / hours <= 1.0,
    }
