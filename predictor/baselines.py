"""What the model has to beat, scored on the same rows as the model: a hand rule written once
without tuning, and a logistic regression on the same features. Plus the Wilson interval the
comparison quotes with its proportions.

The hand rule: a worker is failing while its memory grows faster than 3 MB/s, or its event
loop lagged 300 ms or more, or a gap between its health samples reached 2.5 s, in the 20 s
window; it fires after 5 such rounds in a row, as the model's policy does after k.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

HAND_RULE = {"rss_slope_mb_s": 3.0, "lag_max_ms": 300.0, "hb_gap_max_s": 2.5}
HAND_RULE_K = 5
HAND_RULE_TEXT = (f"memory slope > {HAND_RULE['rss_slope_mb_s']:g} MB/s, or event-loop lag >= "
                  f"{HAND_RULE['lag_max_ms']:g} ms, or a sample gap >= "
                  f"{HAND_RULE['hb_gap_max_s']:g} s, for {HAND_RULE_K} rounds")


def hand_rule_scores(df: pd.DataFrame) -> pd.DataFrame:
    """The rows with p_failing 1.0 where the hand rule holds and 0.0 elsewhere (p_healthy the
    rest), so the model's replay and metrics score it unchanged."""
    hit = ((df["rss_slope_mb_s"] > HAND_RULE["rss_slope_mb_s"])
           | (df["lag_max_ms"] >= HAND_RULE["lag_max_ms"])
           | (df["hb_gap_max_s"] >= HAND_RULE["hb_gap_max_s"])).to_numpy(dtype=float)
    out = df.copy()
    out["p_failing"] = hit
    out["p_degraded"] = 0.0
    out["p_healthy"] = 1.0 - hit
    return out


class RulePipeline:
    """The hand rule in a fitted pipeline's shape (`classes_`, `feature_names_in_`,
    `predict_proba`), so it is loaded, served, scored and carded as a model is
    (predictor/shipped.py): p_failing 1.0 where the rule holds, else 0.0."""

    classes_ = np.array(["degraded", "failing", "healthy"])
    feature_names_in_ = np.array(list(HAND_RULE))

    def predict_proba(self, x: pd.DataFrame) -> np.ndarray:
        hit = hand_rule_scores(x)["p_failing"].to_numpy()
        return np.column_stack([np.zeros_like(hit), hit, 1.0 - hit])


def make_logistic(seed: int = 0, max_iter: int = 1000) -> Pipeline:
    """A linear baseline: missing values (no finished job yet) as the median, scaled, classes
    weighted by their inverse frequency."""
    return Pipeline([("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
                     ("scale", StandardScaler()),
                     ("model", LogisticRegression(class_weight="balanced", max_iter=max_iter,
                                                  random_state=seed))])


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float] | None:
    """The 95 % Wilson score interval of a proportion; None without trials."""
    if n <= 0:
        return None
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return round(max(0.0, centre - half), 3), round(min(1.0, centre + half), 3)


def at_threshold(scored: pd.DataFrame, threshold: float | np.ndarray) -> dict[str, object]:
    """Row precision and recall of `failing` when a row counts as failing at p_failing >=
    `threshold` (one value, or one per row), each with its Wilson interval; and the same
    against the horizon-only label (`horizon`), where the rows carry it."""
    flagged = scored["p_failing"].to_numpy() >= threshold
    out = _precision_recall(flagged, (scored["label"] == "failing").to_numpy())
    if "within_horizon" in scored:
        out["horizon"] = _precision_recall(flagged, scored["within_horizon"].to_numpy(bool))
    return out


def _precision_recall(flagged: np.ndarray, truth: np.ndarray) -> dict[str, object]:
    hits = int((flagged & truth).sum())
    return {"precision": round(hits / flagged.sum(), 3) if flagged.any() else None,
            "precision_ci": wilson(hits, int(flagged.sum())),
            "recall": round(hits / truth.sum(), 3) if truth.any() else None,
            "recall_ci": wilson(hits, int(truth.sum()))}
