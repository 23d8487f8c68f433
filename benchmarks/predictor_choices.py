"""The predictor's design choices compared on the nested validation folds of training runs
only (docs/predictor.md, "How it got there"): which features a model learns from, how many
consecutive scores it needs (k), and how the action threshold is chosen.

    .venv/bin/python benchmarks/predictor_choices.py out/harder2/*

For each feature set (the 20 base features, those without the absolute levels, the model's
default set, and every feature) the out-of-fold scores are computed once; each k and each
threshold rule is then replayed on them, every fold at a threshold chosen on the folds before
it. Event F1 (firing precision and gradual recall) is what `retrain` ships on. The hand rule
on the same rows is the last line. Nothing here is a test set: give training runs only."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd

from predictor import features as F
from predictor.baselines import HAND_RULE_K, hand_rule_scores
from predictor.dataset import HORIZON_S, build
from predictor.policy import Policy
from predictor.train import (
    THRESHOLDS,
    choose_threshold,
    cross_validate,
    event_f1,
    event_metrics,
    nested,
)

SETS = {"base (20)": F.BASE_FEATURES,
        "base without absolute levels": tuple(f for f in F.BASE_FEATURES if f not in F.ABSOLUTE),
        "default (trends, no absolute levels)": F.MODEL_FEATURES,
        "default with memory level (model,rss_mb)": F.feature_set("model,rss_mb"),
        "all": F.FEATURES}


def best_f1(scored: pd.DataFrame, k: int, horizon_s: float = HORIZON_S) -> float:
    """The alternative rule: the threshold of the best event F1 whose median lead is >= 10 s."""
    best, best_f1 = THRESHOLDS[-1], -1.0
    for th in THRESHOLDS:
        ev = event_metrics(scored, Policy(threshold=th, k=k, holdout=0), horizon_s)
        lead = ev["gradual"]["lead_s"]
        if lead and lead["p50"] >= 10 and event_f1(ev) >= best_f1:
            best, best_f1 = th, event_f1(ev)
    return best


def line(name: str, ev: dict[str, Any]) -> str:
    g = ev["gradual"]
    lead = (g["lead_s"] or {}).get("p50")
    return (f"{name:58s} F1 {event_f1(ev):.3f}  caught {g['caught']}/{g['failures']}  "
            f"precision {ev['precision']}  false {ev['false_replacements']}  lead p50 {lead}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="training run folders (at least four)")
    ap.add_argument("--only", default="", help="feature sets whose name contains this")
    ap.add_argument("--k", type=int, nargs="+", default=[3, 5, 8])
    args = ap.parse_args()
    df, _ = build([Path(r) for r in args.runs])
    rows = None
    for name, feats in SETS.items():
        if args.only not in name:
            continue
        oof, folds = cross_validate(df, features=feats)
        for k in args.k:
            for rule_name, rule in (("95 % recall (shipped rule)", choose_threshold),
                                    ("best F1", best_f1)):
                part, fired, _ = nested(oof, folds, k, choose=rule)
                rows = part if rows is None else rows
                print(line(f"{name}, k={k}, {rule_name}",
                           event_metrics(part, Policy(), fired=fired)), flush=True)
    hand = hand_rule_scores(rows)
    print(line("hand rule", event_metrics(hand, Policy(threshold=0.5, k=HAND_RULE_K,
                                                       holdout=0))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
