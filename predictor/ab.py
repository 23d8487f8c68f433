"""The A/B of proactive replacement: treated workers against hold-out workers of the same runs.

A run with a predictor and a hold-out share (`jobharness run ... --predictor default --holdout
0.5`) splits its workers by a hash of their id (`Policy.held_out`): the supervisor acts on the
firings of treated workers and only logs those of hold-out ones, so both arms meet the same
load, the same faults and the same machine at the same moments. Per run and arm:

- `fatal`: workers a drill gave a fault that ends in a failure (leak, slow, stall);
- `abandoned`: attempts cut off by their worker's loss (`LEASE_EXPIRED`), not counting workers
  a drill killed outright (nothing predicts a SIGKILL; counted apart as `abandoned_abrupt`);
- `caught`: fatal workers replaced on a prediction (treated) or flagged (hold-out);
- `false_drains`: workers without a fatal fault replaced on a prediction (treated), or flagged
  (hold-out: what acting would have cost); each is a spawn the fleet did not need;
- `worker_hours`: from registration to stop (or last heartbeat).

The effect is the drop in abandoned attempts per fatal fault, treated against hold-out, pooled
over runs; its 95 % interval comes from resampling whole runs (a bootstrap: runs are the
independent units, workers of one run are not). `jobs_saved` is what the treated arm's fatal
workers would have abandoned at the hold-out rate, minus what they did abandon.
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from core.contract import runfolder
from core.worker.faults import FATAL_MODES
from predictor.dataset import (
    failing_per_round,
    first_firings,
    journal_items,
    read_predictions,
    worker_hours,
)
from predictor.policy import Policy

ARMS = ("treated", "holdout")
BOOTSTRAP = 2000


class ABError(ValueError):
    """A run folder cannot take part in the A/B (no predictor, no hold-out share)."""


@dataclass
class Arm:
    workers: int = 0
    worker_hours: float = 0.0
    fatal: int = 0
    abandoned: int = 0
    abandoned_abrupt: int = 0
    caught: int = 0
    flagged: int = 0
    false_drains: int = 0
    executions: int = 0


@dataclass
class RunAB:
    run: str
    drill: str
    seed: int | None
    holdout: float
    arms: dict[str, Arm] = field(default_factory=dict)
    # the most workers scoring failing in one round (the supervisor's fleet-wide hold acts
    # from 8); None in summaries written before it was counted
    most_failing: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"run": self.run, "drill": self.drill, "seed": self.seed, "holdout": self.holdout,
                "most_failing": self.most_failing,
                "arms": {k: asdict(v) for k, v in self.arms.items()}}


def from_summaries(path: Path) -> list[RunAB]:
    """The runs an earlier `ab.json` holds (its per-run arms), so a comparison can pool new
    run folders with the committed summaries of earlier ones."""
    try:
        data = json.loads(path.read_text())
        return [RunAB(run=str(r["run"]), drill=str(r["drill"]), seed=r.get("seed"),
                      holdout=float(r["holdout"]), most_failing=r.get("most_failing"),
                      arms={a: Arm(**r["arms"][a]) for a in ARMS}) for r in data["runs"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise ABError(f"{path}: not an ab.json of `predictor ab` ({exc})") from exc


def load_runs(paths: Iterable[Path]) -> list[RunAB]:
    """Run folders and earlier ab.json files; a run named twice is refused (pooled twice, it
    would count twice)."""
    runs: list[RunAB] = []
    for path in paths:
        runs += from_summaries(path) if path.suffix == ".json" else [run_ab(path)]
    names = [r.run for r in runs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ABError(f"runs given twice: {', '.join(twice)}")
    return runs


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def run_ab(run_dir: Path) -> RunAB:
    """One run's two arms (ABError when the run had no predictor or no hold-out share)."""
    meta_path = run_dir / "predictions.json"
    if not meta_path.is_file():
        raise ABError(f"{run_dir.name}: no predictions.json (run it with --predictor)")
    meta = json.loads(meta_path.read_text())
    holdout = float(meta.get("holdout", 0))
    if not 0 < holdout < 1:
        raise ABError(f"{run_dir.name}: hold-out share {holdout:g}, so no hold-out arm "
                      "(run it with --holdout 0.5)")
    policy = Policy(threshold=float(meta["threshold"]), k=int(meta["k"]), holdout=holdout)
    verdict = json.loads((run_dir / runfolder.VERDICT).read_text())
    config = json.loads((run_dir / runfolder.CONFIG).read_text())
    modes = {str(d["worker_id"]): str(d["mode"]) for d in journal_items(verdict, "degraded")}
    killed = {str(w) for w in journal_items(verdict, "killed")}
    drill = verdict.get("drill") or {}
    out = RunAB(run=run_dir.name, drill=str(drill.get("name", "")) if drill else "",
                seed=(config.get("scenario") or {}).get("seed"), holdout=holdout,
                arms={a: Arm() for a in ARMS})

    def arm_of(wid: str) -> Arm:
        return out.arms["holdout" if policy.held_out(wid) else "treated"]

    workers = pd.read_csv(run_dir / "workers.csv", dtype=str, keep_default_na=False)
    for wid, h in zip(workers["id"], worker_hours(workers), strict=True):
        arm = arm_of(wid)
        arm.workers += 1
        arm.worker_hours += float(h)
        if modes.get(wid) in FATAL_MODES:
            arm.fatal += 1
    preds = read_predictions(run_dir)
    _count_firings(preds, modes, arm_of)
    _count_abandoned(run_dir, killed, arm_of)
    per_round = failing_per_round(preds)
    out.most_failing = int(per_round.max()) if len(per_round) else 0
    return out


def _count_firings(preds: pd.DataFrame, modes: dict[str, str],
                   arm_of: Callable[[str], Arm]) -> None:
    """Workers the policy fired on (treated: replaced; hold-out: only logged), right when the
    worker had a fatal fault."""
    for wid in first_firings(preds)["worker_id"]:
        arm = arm_of(wid)
        arm.flagged += 1
        if modes.get(wid) in FATAL_MODES:
            arm.caught += 1
        else:
            arm.false_drains += 1


def _count_abandoned(run_dir: Path, killed: set[str], arm_of: Callable[[str], Arm]) -> None:
    for e in _rows(run_dir / "executions.csv"):
        arm = arm_of(e["worker_id"])
        arm.executions += 1
        if e["status"] == "LEASE_EXPIRED":
            if e["worker_id"] in killed:
                arm.abandoned_abrupt += 1
            else:
                arm.abandoned += 1


def _pooled(runs: Sequence[RunAB]) -> dict[str, Arm]:
    total = {a: Arm() for a in ARMS}
    for r in runs:
        for a in ARMS:
            for k, v in asdict(r.arms[a]).items():
                setattr(total[a], k, getattr(total[a], k) + v)
    return total


def _reduction(arms: dict[str, Arm]) -> float | None:
    """1 - (treated abandoned per fatal fault) / (hold-out abandoned per fatal fault)."""
    t, h = arms["treated"], arms["holdout"]
    if not t.fatal or not h.fatal or not h.abandoned:
        return None
    return 1 - (t.abandoned / t.fatal) / (h.abandoned / h.fatal)


def exact_reduction_95(t: int, a: int, h: int, b: int) -> list[float] | None:
    """The 95 % interval of 1 - (t / a) / (h / b) for Poisson counts t and h over exposures a
    and b (fatal faults): exact, conditional on t + h (Clopper-Pearson for t's share, turned
    into the rate ratio). Unlike a bootstrap it stays informative when one arm counts 0."""
    from scipy.stats import beta

    n = t + h
    if not (a and b and n):
        return None
    p_lo = 0.0 if t == 0 else float(beta.ppf(0.025, t, n - t + 1))
    p_hi = 1.0 if t == n else float(beta.ppf(0.975, t + 1, n - t))

    def ratio(p: float) -> float:
        return float("inf") if p >= 1 else p / (1 - p) * b / a

    return [round(1 - ratio(p_hi), 3), round(1 - ratio(p_lo), 3)]


def summarize(runs: Sequence[RunAB], *, seed: int = 0) -> dict[str, Any]:
    """Pooled arms, the reduction of abandoned attempts per fatal fault with its bootstrap
    95 % interval over runs, and the jobs saved."""
    pooled = _pooled(runs)
    rng = random.Random(seed)
    draws = []
    for _ in range(BOOTSTRAP if len(runs) > 1 else 0):
        r = _reduction(_pooled([runs[rng.randrange(len(runs))] for _ in runs]))
        if r is not None:
            draws.append(r)
    draws.sort()
    interval = ([round(draws[int(0.025 * (len(draws) - 1))], 3),
                 round(draws[int(0.975 * (len(draws) - 1))], 3)] if draws else None)
    t, h = pooled["treated"], pooled["holdout"]
    saved = (round(h.abandoned / h.fatal * t.fatal - t.abandoned, 1)
             if h.fatal else None)
    reduction = _reduction(pooled)
    return {
        "runs": len(runs),
        "arms": {a: {**asdict(pooled[a]), "worker_hours": round(pooled[a].worker_hours, 2),
                     "abandoned_per_fatal": round(pooled[a].abandoned / pooled[a].fatal, 3)
                     if pooled[a].fatal else None,
                     "false_drains_per_100_worker_hours":
                         round(100 * pooled[a].false_drains / pooled[a].worker_hours, 1)
                         if pooled[a].worker_hours else None}
                 for a in ARMS},
        "reduction": None if reduction is None else round(reduction, 3),
        "reduction_95": interval,
        "reduction_95_exact": exact_reduction_95(t.abandoned, t.fatal, h.abandoned, h.fatal),
        "bootstrap": {"draws": len(draws), "seed": seed, "unit": "run"},
        "jobs_saved": saved,
    }


def write(runs: Sequence[RunAB], out_dir: Path) -> dict[str, Any]:
    """ab.json (every run's arms and the summary) and ab.md (the tables) in `out_dir`."""
    summary = summarize(runs)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "ab.json").write_text(json.dumps(
        {"summary": summary, "runs": [r.as_dict() for r in runs]}, indent=2) + "\n")
    (out_dir / "ab.md").write_text(markdown(runs, summary))
    return summary


def markdown(runs: Iterable[RunAB], summary: dict[str, Any]) -> str:
    lines = ["# Proactive replacement: treated against hold-out workers", "",
             "| run | drill | seed | arm | workers | worker-hours | fatal | caught | "
             "abandoned | abrupt | false drains | most failing in a round |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        for a in ARMS:
            m = r.arms[a]
            most = "-" if r.most_failing is None else r.most_failing
            lines.append(f"| {r.run} | {r.drill} | {r.seed} | {a} | {m.workers} | "
                         f"{m.worker_hours:.2f} | {m.fatal} | {m.caught} | {m.abandoned} | "
                         f"{m.abandoned_abrupt} | {m.false_drains} | {most} |")
    lines += ["", "| arm | fatal | caught | abandoned | per fatal fault | false drains | "
              "per 100 worker-hours |", "|---|---|---|---|---|---|---|"]
    for a in ARMS:
        m = summary["arms"][a]
        lines.append(f"| {a} | {m['fatal']} | {m['caught']} | {m['abandoned']} | "
                     f"{m['abandoned_per_fatal']} | {m['false_drains']} | "
                     f"{m['false_drains_per_100_worker_hours']} |")
    ci, ex = summary["reduction_95"], summary["reduction_95_exact"]
    lines += ["", f"Abandoned attempts per fatal fault, treated against hold-out: "
              f"{_pct(summary['reduction'])} fewer (95 % interval, runs resampled: "
              f"{_pct(ci[0]) if ci else 'n/a'} to {_pct(ci[1]) if ci else 'n/a'}; exact, as "
              f"Poisson counts: {_pct(ex[0]) if ex else 'n/a'} to {_pct(ex[1]) if ex else 'n/a'})"
              f"; jobs saved {summary['jobs_saved']}; {summary['runs']} runs.", ""]
    return "\n".join(lines)


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.0f} %"
