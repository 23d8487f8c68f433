"""Training and evaluation of the worker-health model.

Validation splits are grouped by run and ordered in time: fold i trains on the runs that
started before run i and tests on run i, so no row of a tested worker (nor anything later)
is seen in training. Scores are reported on two levels:
- rows: per-class precision/recall/F1 and the PR-AUC of `failing` (average precision);
- events, replaying the supervisor's policy (k consecutive `failing` scores at or above the
  threshold): a gradual failure is caught when the policy fires before it; a firing is right
  when that worker then fails, else it is a false replacement (a healthy worker replaced),
  counted per worker-hour of work that was not about to fail. Firings more than the horizon
  ahead of the failure are right but counted as early. Lead time is failure time minus firing
  time. Abrupt failures are scored apart.
"""

from __future__ import annotations

import platform
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import average_precision_score, precision_recall_fscore_support
from sklearn.pipeline import Pipeline

from predictor.baselines import (
    HAND_RULE_K,
    HAND_RULE_TEXT,
    at_threshold,
    hand_rule_scores,
    make_logistic,
)
from predictor.dataset import CLASSES, HORIZON_S
from predictor.features import MODEL_FEATURES
from predictor.model import used_features
from predictor.policy import Policy, first_firing

THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98)


def make_pipeline(seed: int = 0, max_iter: int = 200) -> Pipeline:
    """Gradient-boosted trees: no scaling needed, missing values (a worker with no finished
    job has no duration p99) handled natively, classes weighted by their inverse frequency."""
    return Pipeline([("model", HistGradientBoostingClassifier(
        max_iter=max_iter, learning_rate=0.08, max_leaf_nodes=15, min_samples_leaf=40,
        l2_regularization=1.0, class_weight="balanced", random_state=seed))])


def trainable(df: pd.DataFrame) -> pd.DataFrame:
    """Rows a model learns from: abrupt failures' rows are left out (nothing predicts them)."""
    return df[df["kind"] != "abrupt"]


Maker = Callable[..., Pipeline]


def fit(df: pd.DataFrame, seed: int = 0, max_iter: int | None = None,
        make: Maker = make_pipeline, features: tuple[str, ...] = MODEL_FEATURES) -> Pipeline:
    rows = trainable(df)
    if rows["label"].nunique() < 2:
        raise ValueError("the training rows hold a single class: run a drill with faults "
                         "(degrading-workers) to get failures to learn from")
    model = make(seed) if max_iter is None else make(seed, max_iter)
    return model.fit(rows[list(features)], rows["label"])


def time_splits(df: pd.DataFrame) -> list[tuple[list[str], str]]:
    """(training runs, test run) pairs: every run tested on a model of the runs before it."""
    runs = [str(r) for r in df["run"].cat.categories if (df["run"] == r).any()] \
        if isinstance(df["run"].dtype, pd.CategoricalDtype) else sorted(df["run"].unique())
    return [(runs[:i], runs[i]) for i in range(1, len(runs))]


def score(model: Pipeline, df: pd.DataFrame) -> pd.DataFrame:
    out = df.copy()
    proba = model.predict_proba(df[used_features(model)])
    for i, cls in enumerate(model.classes_):
        out[f"p_{cls}"] = proba[:, i]
    for cls in CLASSES:
        if f"p_{cls}" not in out:
            out[f"p_{cls}"] = 0.0
    return out


def _row_metrics(scored: pd.DataFrame) -> dict[str, Any]:
    rows = trainable(scored)
    pred = np.array(CLASSES)[rows[[f"p_{c}" for c in CLASSES]].to_numpy().argmax(axis=1)]
    p, r, f, n = precision_recall_fscore_support(rows["label"], pred, labels=list(CLASSES),
                                                 zero_division=0)
    per_class = {c: {"precision": round(float(p[i]), 3), "recall": round(float(r[i]), 3),
                     "f1": round(float(f[i]), 3), "support": int(n[i])}
                 for i, c in enumerate(CLASSES)}
    y = rows["label"] == "failing"
    pr_auc = float(average_precision_score(y, rows["p_failing"])) if y.any() else None
    return {"per_class": per_class, "pr_auc_failing": None if pr_auc is None else round(pr_auc, 3)}


def event_metrics(scored: pd.DataFrame, policy: Policy, horizon_s: float = HORIZON_S,
                  step_s: float = 1.0, fired: pd.DataFrame | None = None) -> dict[str, Any]:
    """Replay the policy over scored rows (see the module text for the definitions); or,
    given `fired` (first_firing's frame), score those firings."""
    if fired is None:
        fired = first_firing(scored, policy)
    lives = scored.groupby(["run", "worker_id"], observed=True).agg(
        failure_at=("failure_at", "first"), kind=("kind", "first")).reset_index()
    ev = lives.merge(fired, on=["run", "worker_id"], how="left")
    lead = ev["failure_at"] - ev["fired_at"]
    firings = ev["fired_at"].notna()
    caught = firings & ev["failure_at"].notna() & (lead > 0)
    healthy_hours = float((scored["label"] != "failing").sum()) * step_s / 3600
    false = int((firings & ~caught).sum())
    out: dict[str, Any] = {"healthy_worker_hours": round(healthy_hours, 3),
                           "firings": int(firings.sum()), "false_replacements": false,
                           "early_firings": int((caught & (lead > horizon_s)).sum()),
                           "false_per_100_worker_hours":
                               round(100 * false / healthy_hours, 2) if healthy_hours else None,
                           "false_per_100_upper95":
                               round(100 * poisson_upper95(false) / healthy_hours, 2)
                               if healthy_hours else None,
                           "precision": round(float(caught.sum() / firings.sum()), 3)
                           if firings.any() else None}
    for kind in ("gradual", "abrupt"):
        mask = ev["kind"] == kind
        leads = lead[mask & caught].to_numpy()
        out[kind] = {"failures": int(mask.sum()), "caught": int((mask & caught).sum()),
                     "recall": round(float((mask & caught).sum() / mask.sum()), 3)
                     if mask.any() else None,
                     "lead_s": _distribution(leads)}
    return out


def poisson_upper95(k: int) -> float:
    """The one-sided 95 % upper bound of a Poisson mean after `k` events (exact: half the
    chi-square quantile with 2k + 2 degrees of freedom; 3.0 for none)."""
    from scipy.stats import chi2

    return float(chi2.ppf(0.95, 2 * k + 2) / 2)


def _distribution(values: np.ndarray) -> dict[str, float] | None:
    if not len(values):
        return None
    q = np.percentile(values, [10, 25, 50, 75, 90])
    return {"n": len(values), "min": round(float(values.min()), 1),
            **{f"p{p}": round(float(v), 1) for p, v in zip((10, 25, 50, 75, 90), q,
                                                            strict=True)},
            "max": round(float(values.max()), 1)}


def evaluate(model: Pipeline, df: pd.DataFrame, policy: Policy,
             horizon_s: float = HORIZON_S) -> dict[str, Any]:
    """Rows (per class, and `failing` at the action threshold with Wilson intervals) and the
    policy's events."""
    scored = score(model, df)
    return {"rows": _row_metrics(scored),
            "at_threshold": at_threshold(trainable(scored), policy.threshold),
            "events": event_metrics(scored, policy, horizon_s)}


def cross_validate(df: pd.DataFrame, seed: int = 0, make: Maker = make_pipeline,
                   features: tuple[str, ...] = MODEL_FEATURES
                   ) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """Out-of-fold scores of every run after the first, and which runs each fold used."""
    parts, folds = [], []
    for train_runs, test_run in time_splits(df):
        train = df[df["run"].isin(train_runs)]
        test = df[df["run"] == test_run]
        if trainable(train)["label"].nunique() < 2:
            continue
        parts.append(score(fit(train, seed, make=make, features=features), test))
        folds.append({"train": train_runs, "test": test_run})
    if not parts:
        return df.iloc[:0], folds
    return pd.concat(parts, ignore_index=True), folds


def choose_threshold(scored: pd.DataFrame, k: int, horizon_s: float = HORIZON_S) -> float:
    """The highest threshold that still catches 95 % of the folds' gradual failures with a
    median lead of 15 s or more. A false replacement drains a healthy worker and the target
    is fewer than one per 100 worker-hours, while the folds hold only a few worker-hours of
    healthy work: so the threshold is as strict as catching failures in time allows, not as
    loose as the folds' few healthy hours would tolerate. Failing that, the lowest threshold
    whose firings are right 95 % of the time; failing that, the highest tried."""
    results = [(th, event_metrics(scored, Policy(threshold=th, k=k, holdout=0), horizon_s))
               for th in THRESHOLDS]
    for th, ev in reversed(results):
        recall, lead = ev["gradual"]["recall"], ev["gradual"]["lead_s"]
        if recall is not None and recall >= 0.95 and lead and lead["p50"] >= 15:
            return th
    for th, ev in results:
        if ev["precision"] is not None and ev["precision"] >= 0.95:
            return th
    return THRESHOLDS[-1]


def class_balance(df: pd.DataFrame) -> dict[str, int]:
    counts = trainable(df)["label"].value_counts()
    return {c: int(counts.get(c, 0)) for c in CLASSES}


def versions() -> dict[str, str]:
    import sklearn
    import skops

    return {"python": platform.python_version(), "scikit-learn": sklearn.__version__,
            "skops": skops.__version__, "pandas": pd.__version__, "numpy": np.__version__}


def nested(oof: pd.DataFrame, folds: list[dict[str, Any]], k: int,
           horizon_s: float = HORIZON_S, choose: Callable[..., float] | None = None
           ) -> tuple[pd.DataFrame, pd.DataFrame, list[dict[str, Any]]]:
    """Each outer fold scored at a threshold chosen (`choose`, choose_threshold by default) on
    the folds before it only (the inner folds), so no fold's threshold saw its own scores: the
    rows of every fold that has an earlier one (with the threshold it got), their firings, and
    the thresholds."""
    choose = choose or choose_threshold
    rows, fired, chosen = [], [], []
    tests = [f["test"] for f in folds]
    for i in range(1, len(tests)):
        th = choose(oof[oof["run"].isin(tests[:i])], k, horizon_s)
        part = oof[oof["run"] == tests[i]].assign(threshold=th)
        rows.append(part)
        fired.append(first_firing(part, Policy(threshold=th, k=k, holdout=0)))
        chosen.append({"test": tests[i], "threshold": th})
    if not rows:
        return oof.iloc[:0], pd.DataFrame(columns=["run", "worker_id", "fired_at"]), chosen
    return pd.concat(rows, ignore_index=True), pd.concat(fired, ignore_index=True), chosen


def _judged(rows: pd.DataFrame, fired: pd.DataFrame, horizon_s: float) -> dict[str, Any]:
    scored = trainable(rows)
    y = scored["label"] == "failing"
    return {"pr_auc_failing": round(float(average_precision_score(y, scored["p_failing"])), 3)
            if y.any() else None,
            "at_threshold": at_threshold(scored, scored["threshold"].to_numpy()),
            "events": event_metrics(rows, Policy(), horizon_s, fired=fired)}


def event_f1(ev: dict[str, Any]) -> float:
    """One number for a scorer's events: the harmonic mean of its firing precision and its
    gradual recall (0 when either is missing or zero)."""
    p, r = ev.get("precision") or 0.0, ev["gradual"].get("recall") or 0.0
    return 2 * p * r / (p + r) if p + r else 0.0


def compare_baselines(df: pd.DataFrame, oof: pd.DataFrame, folds: list[dict[str, Any]], *,
                      k: int, seed: int = 0, horizon_s: float = HORIZON_S,
                      features: tuple[str, ...] = MODEL_FEATURES) -> dict[str, Any] | None:
    """The model, a logistic regression and the hand rule on the same outer-fold rows, the
    learnt ones at thresholds chosen on earlier folds only; None with fewer than three runs."""
    rows, fired, chosen = nested(oof, folds, k, horizon_s)
    if not len(rows):
        return None
    lr_oof, lr_folds = cross_validate(df, seed, make=make_logistic, features=features)
    lr_rows, lr_fired, lr_chosen = nested(lr_oof, lr_folds, k, horizon_s)
    hand = hand_rule_scores(rows).assign(threshold=0.5)
    scorers = {"model": {**_judged(rows, fired, horizon_s), "thresholds": chosen},
               "logistic": {**_judged(lr_rows, lr_fired, horizon_s), "thresholds": lr_chosen},
               "hand_rule": {**_judged(hand, first_firing(hand, Policy(
                   threshold=0.5, k=HAND_RULE_K, holdout=0)), horizon_s),
                   "rule": HAND_RULE_TEXT}}
    f1 = {name: round(event_f1(s["events"]), 3) for name, s in scorers.items()}
    return {"runs": [c["test"] for c in chosen], "rows": len(rows), "scorers": scorers,
            "event_f1": f1, "model_beats_hand_rule": f1["model"] > f1["hand_rule"]}


def train(df: pd.DataFrame, *, k: int = 5, seed: int = 0, horizon_s: float = HORIZON_S,
          features: tuple[str, ...] = MODEL_FEATURES) -> tuple[Pipeline, dict[str, Any]]:
    """Validate (time-ordered, grouped by run), pick the threshold, fit on everything. The
    validation's events are scored at thresholds chosen on earlier folds only (nested); the
    threshold shipped is then chosen on every fold."""
    oof, folds = cross_validate(df, seed, features=features)
    threshold = choose_threshold(oof, k, horizon_s) if len(oof) else 0.6
    validation: dict[str, Any] | None = None
    baselines = compare_baselines(df, oof, folds, k=k, seed=seed, horizon_s=horizon_s,
                                  features=features) if len(oof) else None
    if baselines is not None:
        model_scores = baselines["scorers"]["model"]
        validation = {"folds": folds, "rows": _row_metrics(oof),
                      "events": model_scores["events"],
                      "thresholds": model_scores["thresholds"],
                      "at_threshold": model_scores["at_threshold"]}
    model = fit(df, seed, features=features)
    report = {"horizon_s": horizon_s, "threshold": threshold, "k": k, "seed": seed,
              "sampling_interval_s": round(float(df["sampling_interval_s"].median()), 3)
              if "sampling_interval_s" in df else None,
              "features": used_features(model), "class_balance": class_balance(df),
              "rows": len(df), "runs": [str(r) for r in pd.unique(df["run"])],
              "validation": validation, "baselines": baselines, "versions": versions()}
    return model, report
