"""What a policy name means (predictor/shipped.py): `default` is the shipped policy, the hand
rule loads and scores as a model does, and its card says what it is."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from predictor.baselines import HAND_RULE_K, hand_rule_scores
from predictor.card import card_markdown
from predictor.model import ModelError
from predictor.policy import Policy
from predictor.shipped import LEARNT_MODEL, SHIPPED, is_named, load_policy, resolve
from predictor.train import evaluate


def rows(n: int = 40, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"rss_slope_mb_s": rng.uniform(0, 6, n),
                         "lag_max_ms": rng.uniform(0, 500, n),
                         "hb_gap_max_s": rng.uniform(0.5, 3.5, n)})


def test_default_names_the_shipped_policy_and_files_are_not_names() -> None:
    assert resolve("default") == SHIPPED
    assert resolve("out/m.skops") == "out/m.skops"
    assert all(is_named(n) for n in ("default", "hand-rule", "learnt"))
    assert not is_named("default-model.skops")
    assert load_policy("learnt").path == LEARNT_MODEL
    with pytest.raises(ModelError, match="does not exist"):
        load_policy("no-such-model.skops")


def test_the_hand_rule_scores_as_a_model_does() -> None:
    rule = load_policy("hand-rule")
    assert (rule.threshold, rule.k) == (0.5, HAND_RULE_K)
    assert rule.features == ["rss_slope_mb_s", "lag_max_ms", "hb_gap_max_s"]
    df = rows()
    got = rule.predict(df)
    want = hand_rule_scores(df)
    assert got["p_failing"].tolist() == want["p_failing"].tolist()
    assert 0 < got["p_failing"].sum() < len(df)  # the draw has rows on both sides
    assert np.allclose(got[["p_healthy", "p_degraded", "p_failing"]].sum(axis=1), 1.0)


def test_the_hand_rule_is_evaluated_and_carded_as_a_model_is(tmp_path: Path) -> None:
    rule = load_policy("hand-rule")
    df = rows(60, seed=1).assign(
        run="r1", worker_id=[f"w{i % 3}" for i in range(60)], t=np.arange(60.0),
        samples_in_window=20,
        failure_at=np.nan, kind=None, label="healthy")
    result = evaluate(rule.pipeline, df, Policy(threshold=rule.threshold, k=rule.k, holdout=0))
    assert result["at_threshold"]["precision"] == 0.0  # all healthy: every flag is wrong
    text = card_markdown({**rule.meta, "evaluation": {**result, "runs": ["r1"],
                                                      "command": "jobharness predictor x"}})
    assert "`jobharness predictor x`" in text  # each figure with the command that made it
    assert text.startswith("# Worker-health policy: the hand rule")
    assert "Not trained" in text
    assert "Runs: r1" in text
