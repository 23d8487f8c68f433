"""The predictor's pure parts on hand-made data: labels, features, splits, policy replay, the
model file (round trip, corrupt and mismatched files refused)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from predictor.dataset import fatal_onsets, grid_rows, label_rows, outcomes, samples_frame
from predictor.features import (
    BASE_FEATURES,
    FEATURES,
    MODEL_FEATURES,
    TREND_FEATURES,
    Series,
    rows_at,
    worker_row,
)
from predictor.model import ModelError, load, save
from predictor.policy import Policy, Streaks, first_firing
from predictor.train import event_metrics, fit, make_pipeline, time_splits

T0 = 1_800_000_000.0  # an arbitrary epoch second


def stamp(t: float) -> str:
    return pd.Timestamp(t, unit="s", tz="UTC").isoformat()


def series_rows(wid: str, start: float, end: float, *, rss: float = 40.0, rss_slope: float = 0,
                p99: float = 100.0, lag: float = 2.0, step: float = 1.0) -> list[dict[str, object]]:
    """Health samples of one worker, one per `step` seconds, done jobs growing steadily."""
    out = []
    for i, t in enumerate(np.arange(start, end, step)):
        out.append({"worker_id": wid, "sampled_at": stamp(T0 + t),
                    "rss_bytes": int((rss + rss_slope * (t - start)) * 2**20),
                    "cpu_percent": 5.0, "loop_lag_ms": lag, "in_flight": 1,
                    "completed": 3 * i, "failed": 0, "timed_out": 0,
                    "duration_p50_ms": p99 / 3, "duration_p99_ms": p99, "error_rate": 0.0})
    return out


def workers_frame(rows: list[tuple[str, str, float | None, str]]) -> pd.DataFrame:
    return pd.DataFrame([{"id": w, "status": st, "stopped_at": stamp(T0 + t) if t else None,
                          "failure_reason": reason} for w, st, t, reason in rows])


@pytest.fixture
def labelled() -> pd.DataFrame:
    raw = pd.DataFrame(
        series_rows("ok", 0, 120) + series_rows("ok2", 0, 120) + series_rows("ok3", 0, 120)
        + series_rows("leaky", 0, 80, rss_slope=4.0)      # dies at 80 s
        + series_rows("slow", 0, 120, p99=500.0)          # 5x the fleet's p99, never dies
        + series_rows("killed", 0, 70))                   # killed outright at 70 s
    samples = samples_frame(raw)
    workers = workers_frame([
        ("ok", "STOPPED", 120, ""), ("ok2", "STOPPED", 120, ""), ("ok3", "STOPPED", 120, ""),
        ("slow", "STOPPED", 120, ""),
        ("leaky", "FAILED", 80.5, "process killed by signal 9"),
        ("killed", "FAILED", 70.2, "process killed by signal 9")])
    out = outcomes(samples, workers, interval=1.0, abrupt={"killed"}, acted={})
    return label_rows(grid_rows(samples, 1.0), out, horizon_s=30.0, interval=1.0)


def test_failing_is_the_horizon_before_a_failure(labelled: pd.DataFrame) -> None:
    leaky = labelled[labelled["worker_id"] == "leaky"]
    rel = leaky["t"] - T0
    assert set(leaky.loc[rel >= 50.5, "label"]) == {"failing"}   # within 30 s of 80.5
    assert "failing" not in set(leaky.loc[rel < 50.5, "label"])
    assert rel.max() < 80.5  # nothing after the failure
    assert set(leaky["kind"]) == {"gradual"}


def test_a_fatal_faults_path_to_failure_is_failing_from_its_onset() -> None:
    """A leak injected at 10 s that kills at 100 s: every row from the onset is `failing`
    (a warning 80 s ahead is right), the horizon-only label keeps the last 30 s; an abrupt
    kill and a worker with no recorded onset keep the horizon label alone."""
    raw = pd.DataFrame(series_rows("leaky", 0, 100, rss_slope=4.0)
                       + series_rows("killed", 0, 100) + series_rows("ok", 0, 150))
    samples = samples_frame(raw)
    workers = workers_frame([("leaky", "FAILED", 100.5, "process killed by signal 9"),
                             ("killed", "FAILED", 100.5, "process killed by signal 9"),
                             ("ok", "STOPPED", 150, "")])
    out = outcomes(samples, workers, interval=1.0, abrupt={"killed"}, acted={})
    verdict = {"drill": {"journal": [{"result": {"degraded": [
        {"worker_id": "leaky", "mode": "leak", "injected_at": T0 + 10},
        {"worker_id": "ok", "mode": "plateau", "injected_at": T0 + 10}]}}]}}
    out["onset"] = out["worker_id"].map(fatal_onsets(verdict)).astype(float)
    assert fatal_onsets(verdict) == {"leaky": T0 + 10}  # a benign fault is no onset
    rows = label_rows(grid_rows(samples, 1.0), out, horizon_s=30.0, interval=1.0)
    leaky = rows[rows["worker_id"] == "leaky"]
    rel = leaky["t"] - T0
    assert set(leaky.loc[rel >= 10, "label"]) == {"failing"}
    assert "failing" not in set(leaky.loc[rel < 10, "label"])
    assert set(leaky.loc[leaky["within_horizon"], "t"] - T0) == set(rel[rel >= 70.5])
    killed = rows[rows["worker_id"] == "killed"]
    assert (killed["label"] == "failing").sum() == 30 == killed["within_horizon"].sum()
    assert set(rows.loc[rows["worker_id"] == "ok", "label"]) == {"healthy"}


def test_row_scores_report_the_horizon_only_label_beside() -> None:
    from predictor.baselines import at_threshold

    scored = pd.DataFrame({"p_failing": [1.0, 1.0, 1.0, 0.0],
                           "label": ["failing", "failing", "healthy", "failing"],
                           "within_horizon": [True, False, False, False]})
    at = at_threshold(scored, 0.5)
    assert (at["precision"], at["recall"]) == (round(2 / 3, 3), round(2 / 3, 3))
    assert (at["horizon"]["precision"], at["horizon"]["recall"]) == (round(1 / 3, 3), 1.0)


def test_abrupt_failures_are_marked(labelled: pd.DataFrame) -> None:
    killed = labelled[labelled["worker_id"] == "killed"]
    assert set(killed["kind"]) == {"abrupt"}
    assert (killed["label"] == "failing").sum() == 30


def test_outcome_unknown_near_a_graceful_stop_is_dropped(labelled: pd.DataFrame) -> None:
    ok = labelled[labelled["worker_id"] == "ok"]
    assert (ok["t"] - T0).max() <= 120 - 30
    assert set(ok["label"]) == {"healthy"}


def test_degraded_is_relative_to_the_fleet(labelled: pd.DataFrame) -> None:
    slow = labelled[labelled["worker_id"] == "slow"]
    late = slow[slow["t"] - T0 >= 10]  # once its p99 is in the window
    assert set(late["label"]) == {"degraded"}


def test_a_proactively_replaced_worker_is_censored() -> None:
    samples = samples_frame(pd.DataFrame(series_rows("w", 0, 60) + series_rows("v", 0, 60)))
    workers = workers_frame([("w", "STOPPED", 60, ""), ("v", "STOPPED", 60, "")])
    out = outcomes(samples, workers, interval=1.0, abrupt=set(), acted={"w": T0 + 40})
    rows = label_rows(grid_rows(samples, 1.0), out, horizon_s=30.0, interval=1.0)
    assert (rows.loc[rows["worker_id"] == "w", "t"] - T0).max() <= 10
    assert (rows.loc[rows["worker_id"] == "v", "t"] - T0).max() > 10


def test_a_fatally_faulted_worker_still_alive_at_the_end_is_unknown() -> None:
    """A leak that had not killed its worker when the run ended: the rows are not healthy
    (its failure was coming), so they are dropped, and no firing on it can be judged."""
    samples = samples_frame(pd.DataFrame(series_rows("w", 0, 90, rss_slope=5.0)
                                         + series_rows("v", 0, 90)))
    workers = workers_frame([("w", "STOPPED", 90, ""), ("v", "STOPPED", 90, "")])
    out = outcomes(samples, workers, interval=1.0, abrupt=set(), acted={},
                   fatal=frozenset({"w"}))
    rows = label_rows(grid_rows(samples, 1.0), out, horizon_s=30.0, interval=1.0)
    assert set(rows["worker_id"]) == {"v"}
    # without the journal's word it would have counted as a healthy worker
    plain = outcomes(samples, workers, interval=1.0, abrupt=set(), acted={})
    assert "w" in set(label_rows(grid_rows(samples, 1.0), plain, horizon_s=30.0,
                                 interval=1.0)["worker_id"])


def test_features_see_no_sample_after_now() -> None:
    raw = pd.DataFrame(series_rows("a", 0, 30, rss_slope=2.0))
    s = Series.from_frame("a", samples_frame(raw))
    row = worker_row(s, T0 + 10.5)
    assert row is not None
    assert row["rss_mb"] == pytest.approx(40 + 2 * 10, abs=0.01)   # the sample at 10 s
    assert row["rss_slope_mb_s"] == pytest.approx(2.0, abs=1e-6)
    assert row["since_last_s"] == pytest.approx(0.5)
    assert worker_row(s, T0 - 1) is None
    stale = worker_row(s, T0 + 45)  # 16 s after the last sample
    assert stale is not None
    assert stale["since_last_s"] == pytest.approx(16)
    assert stale["hb_gap_max_s"] == pytest.approx(16)


def test_trend_features_tell_a_growing_symptom_from_a_steady_one() -> None:
    """Over the 60 s window: memory that climbs shows its rise; stalls that get longer show
    growth, where stalls as long as before do not; no sample after `now` is read."""
    leak = Series.from_frame("l", samples_frame(pd.DataFrame(
        series_rows("l", 0, 90, rss_slope=3.0))))
    row = worker_row(leak, T0 + 60)
    assert row is not None
    assert row["rss_slope_long_mb_s"] == pytest.approx(3.0, abs=1e-6)
    assert row["rss_rise_long_mb"] == pytest.approx(3.0 * 60, abs=0.01)  # samples 0..60 s

    def stalls(lengths: list[float]) -> Series:
        """1 s samples with a stall (a longer gap) every 10 s."""
        t, times = 0.0, []
        for i in range(60):
            t += lengths[i // 10] if i % 10 == 9 else 1.0
            times.append(t)
        rows = [r for x in times for r in series_rows("s", x, x + 0.5)]
        return Series.from_frame("s", samples_frame(pd.DataFrame(rows)))

    growing = stalls([2.0, 2.0, 2.0, 2.0, 3.0, 4.0])
    steady = stalls([3.0] * 6)
    g = worker_row(growing, float(growing.t[-1]) + 0.2)
    st = worker_row(steady, float(steady.t[-1]) + 0.2)
    assert g is not None
    assert st is not None
    assert g["gap_growth_s"] == pytest.approx(2.0, abs=1e-6)   # 4 s now against 2 s before
    assert st["gap_growth_s"] == pytest.approx(0.0, abs=1e-6)
    # both stall: the count alone does not tell them apart
    assert g["gaps_long"] >= 4
    assert st["gaps_long"] >= 4


def test_rows_without_trends_are_the_same_rows_less_the_trends() -> None:
    """A model that uses no trend feature is scored without computing them (the live
    supervisor's hot path); everything else in the row is unchanged."""
    s = Series.from_frame("a", samples_frame(pd.DataFrame(series_rows("a", 0, 90, rss_slope=2.0))))
    full = worker_row(s, T0 + 75.5)
    short = worker_row(s, T0 + 75.5, trends=False)
    assert full is not None
    assert short is not None
    assert short == {k: v for k, v in full.items() if k not in TREND_FEATURES}


def test_live_rows_carry_fleet_ratios() -> None:
    frames = [samples_frame(pd.DataFrame(series_rows(w, 0, 20, rss=r)))
              for w, r in (("a", 40), ("b", 40), ("c", 120))]
    rows = rows_at([Series.from_frame(f["worker_id"].iloc[0], f) for f in frames], T0 + 19)
    assert set(FEATURES) <= set(rows.columns)
    assert rows.set_index("worker_id")["rss_rel"].to_dict() == pytest.approx(
        {"a": 1.0, "b": 1.0, "c": 3.0}, abs=0.01)


def three_runs() -> pd.DataFrame:
    rows = []
    for r, run in enumerate(("r1", "r2", "r3")):
        for w in ("x", "y"):
            for t in range(50):
                rows.append({"run": run, "worker_id": w, "t": T0 + 1000 * r + t})
    df = pd.DataFrame(rows)
    df["run"] = pd.Categorical(df["run"], categories=["r1", "r2", "r3"], ordered=True)
    return df


def test_splits_are_grouped_by_run_and_ordered_in_time() -> None:
    df = three_runs()
    splits = time_splits(df)
    assert splits == [(["r1"], "r2"), (["r1", "r2"], "r3")]
    for train_runs, test_run in splits:
        train, test = df[df["run"].isin(train_runs)], df[df["run"] == test_run]
        assert train["t"].max() < test["t"].min()  # nothing from the future
        lives = set(zip(train["run"], train["worker_id"], strict=True))
        assert not lives & set(zip(test["run"], test["worker_id"], strict=True))


def test_streaks_fire_after_k_consecutive() -> None:
    s = Streaks(Policy(threshold=0.5, k=3, holdout=0))
    assert [s.update("w", p, 10) for p in (0.9, 0.9, 0.1, 0.9, 0.9, 0.9)] == \
        [False, False, False, False, False, True]
    # too few samples to judge: never counts
    assert not any(s.update("new", 0.99, 2) for _ in range(5))


def test_holdout_is_stable_and_about_its_share() -> None:
    p = Policy(holdout=0.25)
    ids = [f"run-{i:03d}-g{g}" for i in range(200) for g in range(5)]
    share = sum(p.held_out(w) for w in ids) / len(ids)
    assert 0.2 < share < 0.3
    assert [p.held_out(w) for w in ids] == [Policy(holdout=0.25).held_out(w) for w in ids]
    assert not any(Policy(holdout=0).held_out(w) for w in ids)


def test_bad_policy_values_are_refused() -> None:
    for kwargs in ({"threshold": 0}, {"k": 0}, {"holdout": 1.0}):
        with pytest.raises(ValueError, match=next(iter(kwargs))):
            Policy(**kwargs)  # type: ignore[arg-type]


def test_event_replay_lead_time_and_false_replacements() -> None:
    rows = []
    for t in range(100):
        # w1 fails at 60: flagged from 40 on; w2 never fails: flagged at 20..22 (a false alarm)
        rows.append({"run": "r", "worker_id": "w1", "t": float(t), "failure_at": 60.0,
                     "kind": "gradual", "label": "failing" if t >= 30 else "healthy",
                     "samples_in_window": 20,
                     "p_failing": 0.9 if t >= 40 else 0.1} if t < 60 else None)
        rows.append({"run": "r", "worker_id": "w2", "t": float(t), "failure_at": np.nan,
                     "kind": "", "label": "healthy", "samples_in_window": 20,
                     "p_failing": 0.9 if 20 <= t <= 22 else 0.1})
    scored = pd.DataFrame([r for r in rows if r is not None])
    fired = first_firing(scored, Policy(threshold=0.5, k=3, holdout=0)).set_index("worker_id")
    assert fired.loc["w1", "fired_at"] == 42.0
    assert fired.loc["w2", "fired_at"] == 22.0
    ev = event_metrics(scored, Policy(threshold=0.5, k=3, holdout=0), horizon_s=30)
    assert ev["gradual"]["caught"] == 1
    assert ev["gradual"]["lead_s"]["p50"] == 18.0
    assert ev["false_replacements"] == 1
    assert ev["precision"] == 0.5
    assert ev["healthy_worker_hours"] == pytest.approx((30 + 100) / 3600, abs=1e-3)


def tiny_training_rows(seed: int = 0) -> pd.DataFrame:
    """Feature rows where a steep memory slope means failing."""
    rng = np.random.default_rng(seed)
    n = 600
    df = pd.DataFrame({f: rng.normal(1.0, 0.1, n) for f in FEATURES})
    df["rss_slope_mb_s"] = rng.choice([0.0, 5.0], n) + rng.normal(0, 0.2, n)
    df["label"] = np.where(df["rss_slope_mb_s"] > 2.5, "failing", "healthy")
    df["kind"] = np.where(df["label"] == "failing", "gradual", "")
    return df


def test_model_round_trip_through_skops(tmp_path: Path) -> None:
    df = tiny_training_rows()
    model = fit(df, max_iter=20)
    path = tmp_path / "m.skops"
    save(model, {"threshold": 0.7, "k": 2}, path)
    loaded = load(path)
    assert (loaded.threshold, loaded.k) == (0.7, 2)
    assert loaded.features == list(MODEL_FEATURES)  # the absolute levels left out
    probe = df[list(FEATURES)].head(50)
    assert np.allclose(loaded.pipeline.predict_proba(probe[loaded.features]),
                       model.predict_proba(probe[loaded.features]))
    assert (loaded.predict(probe)["p_failing"] > 0.5).tolist() == \
        (df["label"].head(50) == "failing").tolist()


def test_a_model_of_an_older_feature_set_still_loads(tmp_path: Path) -> None:
    """Models name the features they use: one trained on BASE_FEATURES (as the shipped
    model was) keeps working after features are added."""
    df = tiny_training_rows()
    path = tmp_path / "old.skops"
    save(fit(df, max_iter=20, features=BASE_FEATURES), {}, path)
    loaded = load(path)
    assert loaded.features == list(BASE_FEATURES)
    assert len(loaded.predict(df.head(10))) == 10


def test_corrupt_and_foreign_model_files_are_refused(tmp_path: Path) -> None:
    good = tmp_path / "good.skops"
    save(fit(tiny_training_rows(), max_iter=20), {}, good)
    truncated = tmp_path / "truncated.skops"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    garbage = tmp_path / "garbage.skops"
    garbage.write_bytes(b"not a model")
    for path in (truncated, garbage):
        with pytest.raises(ModelError, match=r"not a readable skops file|cannot be loaded"):
            load(path)
    with pytest.raises(ModelError, match="does not exist"):
        load(tmp_path / "missing.skops")
    other = tiny_training_rows().rename(columns={"rss_mb": "rss_gb"})
    cols = [c if c != "rss_mb" else "rss_gb" for c in FEATURES]
    wrong = tmp_path / "wrong.skops"
    save(make_pipeline(max_iter=20).fit(other[cols], other["label"]), {}, wrong)
    with pytest.raises(ModelError, match=r"other features \(unknown \['rss_gb'\]"):
        load(wrong)


def ramp_rows(run: str, wid: str, fail_at: float | None, ramp_from: float,
              end: float = 100.0) -> list[dict[str, object]]:
    """Scored rows of one worker whose p_failing climbs linearly from 0.1 at `ramp_from` to
    0.95 at `fail_at` (a gradual failure), or stays 0.1 (healthy)."""
    out: list[dict[str, object]] = []
    last = fail_at if fail_at is not None else end
    for t in range(int(last)):
        if fail_at is None or t < ramp_from:
            p = 0.1
        else:
            p = 0.1 + 0.85 * (t - ramp_from) / (fail_at - ramp_from)
        out.append({"run": run, "worker_id": wid, "t": float(t),
                    "failure_at": np.nan if fail_at is None else fail_at,
                    "kind": "" if fail_at is None else "gradual",
                    "label": "failing" if fail_at is not None and t >= fail_at - 30
                    else "healthy", "samples_in_window": 20, "p_failing": p})
    return out


def test_choose_threshold_is_the_strictest_that_still_catches_in_time() -> None:
    from predictor.train import THRESHOLDS, choose_threshold

    # p_failing climbs from 0.1 at t=20 to 0.95 at the failure (t=80): with k=3 a threshold
    # th fires at t ~= 20 + (th - 0.1) / 0.85 * 60 + 2, so the lead is ~= 58 - 70.6 (th - 0.1)
    # and shrinks as th grows: 0.6 gives a lead ~= 22.7 s, 0.7 ~= 15.6 s, 0.8 ~= 8.6 s
    rows = []
    for i in range(10):
        rows += ramp_rows("r1", f"g{i}", 80.0, 20.0)
        rows += ramp_rows("r1", f"h{i}", None, 0.0)
    scored = pd.DataFrame(rows)
    assert choose_threshold(scored, k=3) == 0.7  # the highest with a median lead >= 15 s
    # warned only 5 s ahead: no threshold catches in time, so the lowest whose firings are
    # right 95 % of the time (here the lowest tried: nothing healthy ever fires) ...
    late = pd.DataFrame([{**r, "p_failing": 0.95 if r["kind"] and r["t"] >= 75 else 0.1}
                         for r in rows])
    assert choose_threshold(late, k=3) == THRESHOLDS[0]
    # ... and with no warning at all, nothing fires: the highest tried
    never = pd.DataFrame([{**r, "p_failing": 0.1} for r in rows])
    assert choose_threshold(never, k=3) == THRESHOLDS[-1]


def training_frame(runs: int = 3, seed: int = 0) -> pd.DataFrame:
    """Rows of several runs (ordered in time) for cross-validation."""
    parts = []
    for r in range(runs):
        df = tiny_training_rows(seed + r)
        df["run"] = f"run{r}"
        df["worker_id"] = [f"w{i % 20}" for i in range(len(df))]
        df["t"] = np.arange(len(df), dtype=float)
        df["failure_at"] = np.where(df["label"] == "failing", df["t"] + 10, np.nan)
        df["samples_in_window"] = 20
        parts.append(df)
    out = pd.concat(parts, ignore_index=True)
    out["run"] = pd.Categorical(out["run"], categories=[f"run{r}" for r in range(runs)],
                                ordered=True)
    return out


def test_feature_sets_are_named_or_listed() -> None:
    from predictor.features import feature_set

    assert feature_set("model") == MODEL_FEATURES
    assert feature_set("all") == FEATURES
    with_rss = feature_set("model,rss_mb")
    assert set(with_rss) == set(MODEL_FEATURES) | {"rss_mb"}
    assert list(with_rss) == [f for f in FEATURES if f in with_rss]  # the computed order
    assert feature_set(" rss_slope_mb_s , lag_max_ms") == ("rss_slope_mb_s", "lag_max_ms")
    for bad in ("", "rss_gb", "model,,x"):
        with pytest.raises(ValueError, match="unknown features"):
            feature_set(bad)


def test_train_fits_the_features_it_is_given() -> None:
    from predictor.model import used_features
    from predictor.train import train

    chosen = ("rss_slope_mb_s", "rss_mb", "lag_max_ms")
    model, report = train(training_frame(3), k=2, features=chosen)
    assert used_features(model) == list(chosen) == report["features"]


def test_cross_validate_tests_each_run_on_a_model_of_the_runs_before_it() -> None:
    from predictor.train import cross_validate

    df = training_frame(3)
    oof, folds = cross_validate(df)
    assert folds == [{"train": ["run0"], "test": "run1"},
                     {"train": ["run0", "run1"], "test": "run2"}]
    assert set(oof["run"].astype(str)) == {"run1", "run2"}  # never the first run
    assert len(oof) == (df["run"] != "run0").sum()
    # the rule learnt (a steep memory slope) carries to runs it never saw
    failing = oof["label"] == "failing"
    assert oof.loc[failing, "p_failing"].mean() > 0.8
    assert oof.loc[~failing, "p_failing"].mean() < 0.2


def test_train_reports_what_it_validated_and_chose() -> None:
    from predictor.train import THRESHOLDS, train

    model, report = train(training_frame(3), k=2)
    assert report["threshold"] in THRESHOLDS
    assert report["k"] == 2
    assert report["runs"] == ["run0", "run1", "run2"]
    assert [f["test"] for f in report["validation"]["folds"]] == ["run1", "run2"]
    assert report["class_balance"]["failing"] > 0
    assert list(model.classes_) == sorted(set(training_frame(1)["label"]))


def test_predictor_cli_refuses_what_it_cannot_use(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from loadtests.cli import main

    assert main(["predictor", "train", str(tmp_path / "no-such-run"), "--out",
                 str(tmp_path / "m.skops")]) == 1
    assert "no-such-run" in capsys.readouterr().err
    assert main(["predictor", "train", str(tmp_path), "--k", "0", "--out",
                 str(tmp_path / "m.skops")]) == 1
    assert "--k" in capsys.readouterr().err
    assert main(["predictor", "train", str(tmp_path), "--features", "model,rss_gb", "--out",
                 str(tmp_path / "m.skops")]) == 1
    assert "unknown features ['rss_gb']" in capsys.readouterr().err
    assert main(["predictor", "evaluate", str(tmp_path / "missing.skops"), str(tmp_path)]) == 1
    assert capsys.readouterr().err.startswith("error:")
    assert not (tmp_path / "m.skops").exists()  # nothing written


def test_evaluate_refuses_runs_the_model_was_trained_on(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from core.contract import runfolder
    from loadtests.cli import main
    from predictor.dataset import file_hash, used_in_training

    trained, renamed, fresh = (tmp_path / n for n in ("run-a", "copy-of-a", "run-b"))
    for folder, text in ((trained, "a"), (renamed, "a"), (fresh, "b")):
        folder.mkdir()
        (folder / runfolder.WORKER_HEALTH).write_text(f"worker_id,sampled_at\n{text},0\n")
    meta = {"threshold": 0.7, "k": 2, "runs": ["run-a"],
            "sources": [{"run": "run-a", runfolder.WORKER_HEALTH:
                         file_hash(trained / runfolder.WORKER_HEALTH)}]}
    # by name, and by content whatever the folder is called now
    assert used_in_training(meta, [trained, renamed, fresh]) == [str(trained), str(renamed)]
    model = tmp_path / "m.skops"
    save(fit(tiny_training_rows(), max_iter=20), meta, model)
    card = model.with_suffix(".card.json")
    assert main(["predictor", "evaluate", str(model), str(fresh), str(renamed)]) == 1
    err = capsys.readouterr().err
    assert str(renamed) in err
    assert str(fresh) not in err
    assert "--in-sample" in err
    assert main(["predictor", "evaluate", str(model), str(trained), "--in-sample",
                 "--update-card"]) == 1
    assert "--update-card" in capsys.readouterr().err
    assert not card.exists()  # nothing written


def test_nested_thresholds_never_see_the_fold_they_score() -> None:
    from predictor.train import choose_threshold, nested

    def run(name: str, ramp_from: float) -> list[dict[str, object]]:
        rows: list[dict[str, object]] = []
        for i in range(10):
            rows += ramp_rows(name, f"g{i}", 80.0, ramp_from)
            rows += ramp_rows(name, f"h{i}", None, 0.0)
        return rows

    folds = [{"train": [], "test": t} for t in ("r1", "r2", "r3")]
    oof = pd.DataFrame(run("r1", 20.0) + run("r2", 20.0) + run("r3", 50.0))
    rows, fired, chosen = nested(oof, folds, k=3)
    assert [c["test"] for c in chosen] == ["r2", "r3"]  # r1 has no earlier fold
    assert chosen[0]["threshold"] == choose_threshold(oof[oof["run"] == "r1"], k=3) == 0.7
    assert set(rows["run"]) == {"r2", "r3"}
    assert set(fired["run"]) == {"r2", "r3"}
    # r3's own scores do not move r3's threshold (a late ramp there would pick another one)
    assert choose_threshold(oof[oof["run"] == "r3"], k=3) != chosen[1]["threshold"]
    flat = oof.assign(p_failing=np.where(oof["run"] == "r3", 0.1, oof["p_failing"]))
    assert nested(flat, folds, k=3)[2] == chosen


def test_the_hand_rule_and_the_wilson_interval() -> None:
    from predictor.baselines import at_threshold, hand_rule_scores, wilson

    df = pd.DataFrame({"rss_slope_mb_s": [0.5, 3.5, 0.0, 0.0, 0.0],
                       "lag_max_ms": [10.0, 10.0, 300.0, 10.0, 10.0],
                       "hb_gap_max_s": [1.0, 1.0, 1.0, 2.5, 1.0],
                       "label": ["healthy", "failing", "failing", "healthy", "failing"]})
    scored = hand_rule_scores(df)
    assert scored["p_failing"].tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]
    assert (scored["p_healthy"] + scored["p_failing"]).eq(1.0).all()
    at = at_threshold(scored, 0.5)
    assert (at["precision"], at["recall"]) == (round(2 / 3, 3), round(2 / 3, 3))
    assert wilson(5, 10) == (0.237, 0.763)
    assert wilson(0, 10) == (0.0, 0.278)
    assert wilson(0, 0) is None


def test_training_compares_the_model_with_the_baselines_on_the_same_rows() -> None:
    from predictor.card import card_markdown
    from predictor.train import train

    df = training_frame(4)
    _, report = train(df, k=2)
    b = report["baselines"]
    assert b["runs"] == ["run2", "run3"]  # outer folds with an earlier fold to tune on
    assert set(b["scorers"]) == {"model", "logistic", "hand_rule"}
    assert report["validation"]["events"] == b["scorers"]["model"]["events"]
    assert [t["test"] for t in report["validation"]["thresholds"]] == ["run2", "run3"]
    for sc in b["scorers"].values():
        assert sc["events"]["gradual"]["failures"] == b["scorers"]["model"]["events"][
            "gradual"]["failures"]  # the same workers judged
    assert isinstance(b["model_beats_hand_rule"], bool)
    text = card_markdown({**report, "sources": [], "trained_at": "now", "command": "c"})
    assert "## Against the baselines" in text
    assert "| hand rule |" in text
    _, small = train(training_frame(2), k=2)
    assert small["baselines"] is None
    assert "Not available" in card_markdown({**small, "sources": []})


def test_the_false_alarm_bound_is_the_exact_poisson_upper_limit() -> None:
    """0 false replacements in 300 worker-hours bounds the rate at 1 per 100 (the target's
    reason for 300 hours); one event at 4.74 per the same hours."""
    from predictor.train import poisson_upper95

    assert poisson_upper95(0) == pytest.approx(3.0, abs=0.01)
    assert poisson_upper95(1) == pytest.approx(4.744, abs=0.01)
    assert 100 * poisson_upper95(0) / 300 == pytest.approx(1.0, abs=0.01)
