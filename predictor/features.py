"""Features of one worker at one moment, from its health samples up to that moment.

The same code computes training rows (on a grid over a finished run) and the rows the
supervisor scores live, so what the model learns is what it is later shown. A row at time `t`
only uses samples taken at or before `t`; fleet-relative features compare a worker with the
median of the workers scored at the same moment.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd

WINDOW_S = 20.0  # rolling window of the level, slope and jitter features
LONG_WINDOW_S = 60.0  # the longer window of the trend features (is a symptom growing?)
SAMPLE_COLUMNS = ("t", "rss_mb", "cpu_percent", "loop_lag_ms", "in_flight", "completed",
                  "failed", "timed_out", "duration_p99_ms")

# Every feature this code computes, in order. A model uses these or a subset (its pipeline
# names them); one that needs a feature not here is refused (predictor.model).
# `age_s` is computed but not an input: in the drills' data it is confounded with the faults
# (fresh replacements are often the next victims), and a model using it flagged healthy
# young workers during a 100-worker start-up.
BASE_FEATURES = (
    "since_last_s", "hb_gap_max_s", "hb_gap_std_s", "samples_in_window",
    "rss_mb", "rss_slope_mb_s", "rss_rel",
    "cpu_mean", "lag_max_ms", "lag_slope_ms_s", "lag_rel", "hb_gap_rel",
    "p99_ms", "p99_slope_ms_s", "p99_rel",
    "error_rate_w", "timeout_rate_w", "throughput_w", "throughput_rel", "in_flight",
)
# Trends over LONG_WINDOW_S: a fault that ends in failure grows (a leak climbs on, stalls get
# longer and closer), where a benign one holds steady or passes; and the fleet-relative CPU
# (a busy neighbour thread).
TREND_FEATURES = (
    "rss_slope_long_mb_s", "rss_rise_long_mb", "lag_mean_ms", "lag_max_long_ms",
    "lag_slope_long_ms_s", "lag_growth_ms", "gap_max_long_s", "gaps_long", "gap_growth_s",
    "cpu_rel",
)
FEATURES = BASE_FEATURES + TREND_FEATURES
# What a model absent a choice is trained on: every feature but the absolute levels whose
# scale is the drill's (memory in MiB, durations in ms), not the fault's; their fleet-relative
# forms stay.
ABSOLUTE = ("rss_mb", "p99_ms")
MODEL_FEATURES = tuple(f for f in FEATURES if f not in ABSOLUTE)
FEATURE_SETS = {"model": MODEL_FEATURES, "all": FEATURES, "base": BASE_FEATURES}


def feature_set(spec: str) -> tuple[str, ...]:
    """The features a `--features` option names: a set's name (model, all, base), or names
    joined by commas, optionally added to a set (`model,rss_mb`). Unknown names are refused."""
    names: list[str] = []
    for part in (p.strip() for p in spec.split(",")):
        for name in FEATURE_SETS.get(part, (part,)):
            if name not in names:
                names.append(name)
    unknown = [n for n in names if n not in FEATURES]
    if unknown or not names:
        raise ValueError(f"unknown features {unknown} in {spec!r}: name a set "
                         f"({', '.join(FEATURE_SETS)}) or features of {', '.join(FEATURES)}")
    return tuple(f for f in FEATURES if f in names)  # the computed order


@dataclass
class Series:
    """A worker's samples as arrays, sorted by time (seconds since the epoch)."""

    worker_id: str
    t: np.ndarray
    rss_mb: np.ndarray
    cpu: np.ndarray
    lag_ms: np.ndarray
    in_flight: np.ndarray
    completed: np.ndarray
    failed: np.ndarray
    timed_out: np.ndarray
    p99_ms: np.ndarray

    @classmethod
    def from_frame(cls, worker_id: str, df: pd.DataFrame) -> Series:
        df = df.sort_values("t")

        def col(name: str) -> np.ndarray:
            return df[name].to_numpy(dtype=float)

        return cls(worker_id, col("t"), col("rss_mb"), col("cpu_percent"), col("loop_lag_ms"),
                   col("in_flight"), col("completed"), col("failed"), col("timed_out"),
                   col("duration_p99_ms"))


def _slope(t: np.ndarray, y: np.ndarray) -> float:
    """Least-squares slope per second; NaN with fewer than 3 finite points."""
    ok = np.isfinite(y)
    if ok.sum() < 3:
        return float("nan")
    t, y = t[ok], y[ok]
    dt = t - t.mean()
    denom = float((dt * dt).sum())
    return float((dt * (y - y.mean())).sum() / denom) if denom > 0 else float("nan")


def _last(a: np.ndarray) -> float:
    return float(a[-1]) if len(a) else float("nan")


def worker_row(s: Series, now: float, trends: bool = True) -> dict[str, float] | None:
    """The features of worker `s` at time `now` (fleet-relative ones left for `add_fleet`),
    TREND_FEATURES only with `trends` (they cost as much as the rest); None before its first
    sample."""
    end = int(np.searchsorted(s.t, now, side="right"))
    if end == 0:
        return None
    start = int(np.searchsorted(s.t, now - WINDOW_S, side="left"))
    start = min(start, end - 1)  # a stale worker still shows its last sample
    t = s.t[start:end]
    gaps = np.diff(np.append(t, now))
    span = max(float(t[-1] - t[0]), 1e-9)
    done = s.completed[end - 1] - s.completed[start] + s.failed[end - 1] - s.failed[start]
    failed = s.failed[end - 1] - s.failed[start]
    return {
        "age_s": now - float(s.t[0]),
        "since_last_s": now - float(t[-1]),
        "hb_gap_max_s": float(gaps.max()),
        "hb_gap_std_s": float(gaps.std()) if len(gaps) > 1 else 0.0,
        "samples_in_window": float(len(t)),
        "rss_mb": _last(s.rss_mb[start:end]),
        "rss_slope_mb_s": _slope(t, s.rss_mb[start:end]),
        "cpu_mean": float(np.nanmean(s.cpu[start:end])),
        "lag_max_ms": float(np.nanmax(s.lag_ms[start:end])),
        "lag_slope_ms_s": _slope(t, s.lag_ms[start:end]),
        "p99_ms": _last(s.p99_ms[start:end]),
        "p99_slope_ms_s": _slope(t, s.p99_ms[start:end]),
        "error_rate_w": float(failed / done) if done > 0 else 0.0,
        "timeout_rate_w": float((s.timed_out[end - 1] - s.timed_out[start]) / done)
        if done > 0 else 0.0,
        "throughput_w": float(done / span) if len(t) > 1 else float("nan"),
        "in_flight": _last(s.in_flight[start:end]),
        **(_trends(s, start, end, now) if trends else {}),
    }


def _trends(s: Series, start: int, end: int, now: float) -> dict[str, float]:
    """TREND_FEATURES from the samples of the last LONG_WINDOW_S up to `end`, the short
    window being [start, end)."""
    long = min(int(np.searchsorted(s.t, now - LONG_WINDOW_S, side="left")), end - 1)
    t = s.t[long:end]
    rss = s.rss_mb[long:end]
    lag = s.lag_ms[long:end]
    gaps = np.diff(np.append(t, now))
    usual = float(np.median(gaps[:-1])) if len(gaps) > 2 else 1.0
    earlier = t < now - WINDOW_S  # the long window's samples before the short one
    earlier[-1] = False  # a stale worker's last sample counts as recent: its gap is growing
    before_gaps = gaps[earlier]
    return {
        "rss_slope_long_mb_s": _slope(t, rss),
        "rss_rise_long_mb": float(rss[-1] - np.nanmin(rss)),
        "lag_mean_ms": float(np.nanmean(s.lag_ms[start:end])),
        "lag_max_long_ms": float(np.nanmax(lag)),
        "lag_slope_long_ms_s": _slope(t, lag),
        "lag_growth_ms": float(np.nanmax(s.lag_ms[start:end])
                               - (np.nanmax(lag[earlier]) if earlier.any() else 0.0)),
        "gap_max_long_s": float(gaps.max()),
        "gaps_long": float((gaps > 1.5 * usual).sum()),
        "gap_growth_s": float(gaps[~earlier].max()
                              - (before_gaps.max() if len(before_gaps) else usual)),
    }


def add_fleet(rows: pd.DataFrame, by: str | None = None) -> pd.DataFrame:
    """Divide RSS, duration p99, throughput, loop lag, heartbeat gap and CPU by the median of
    the workers scored at the same moment (a slowdown of the whole fleet is not one worker's
    fault) (`by` names the column holding that moment; None: all rows are one moment)."""
    out = rows.copy()
    for col, rel in (("rss_mb", "rss_rel"), ("p99_ms", "p99_rel"),
                     ("throughput_w", "throughput_rel"), ("lag_max_ms", "lag_rel"),
                     ("hb_gap_max_s", "hb_gap_rel"), ("cpu_mean", "cpu_rel")):
        if by:
            med = out.groupby(by)[col].transform("median")
            out[rel] = out[col] / med.where(med > 0)
        else:
            med = out[col].median()
            out[rel] = out[col] / med if med > 0 else np.nan
    return out


def rows_at(series: Iterable[Series], now: float, trends: bool = True) -> pd.DataFrame:
    """One row per worker at `now`, fleet features included (what the supervisor scores);
    TREND_FEATURES only with `trends`."""
    rows = []
    for s in series:
        row = worker_row(s, now, trends)
        if row is not None:
            rows.append({"worker_id": s.worker_id, "t": now, **row})
    if not rows:
        return pd.DataFrame(columns=["worker_id", "t", *FEATURES])
    return add_fleet(pd.DataFrame(rows))
