"""Training rows from run folders (or a target's tables): one row per worker per sampling
interval, its features, and a label from what happened next.

Labels, for a row of worker w at time t, with horizon H:
- ``failing``: w fails in (t, t + H], or w is already on its way to a gradual failure: a drill
  gave it a fatal fault (leak, slow, stall) at or before t (the journal's `injected_at`) and
  it then failed. A failure is a death (the process exited or was killed) or a missed
  heartbeat, whichever the supervisor recorded; its time is the earlier of the recorded stop
  and the last health sample plus two sampling intervals (the first missed heartbeat). The
  horizon alone would call a right warning wrong when a fault takes longer than H to kill (a
  leak over 60-120 s, warned of 50-100 s ahead); `within_horizon` keeps the horizon-only
  label, reported beside it. Runs recorded before the journal carried the time (and a
  target's tables, which have no journal) are labelled by the horizon alone.
- ``degraded``: not failing, and worse than the fleet at that moment by the rule in
  `is_degraded` (duration p99 at least twice the fleet median, event-loop lag of 250 ms or
  more, RSS at least 1.5 times the fleet median, or a heartbeat gap of 2.5 intervals).
- ``healthy``: the rest.
Rows whose outcome is unknown are dropped: within H of a graceful stop, of the end of the
data, or of a proactive replacement (the predictor acted, so the failure never came; hold-out
workers are not acted on and keep their rows); and every row of a worker a drill gave a fatal
fault (leak, slow, stall: each ends in a failure) that had not failed when the run ended: its
failure was on the way but not seen, so its rows are neither healthy nor failing at a known
moment, and a firing on it is neither right nor false. Failures caused by a drill's outright
kill are ``abrupt`` (nothing can predict them): kept, marked, and left out of training and
scores.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core.contract import runfolder
from core.worker.faults import FATAL_MODES
from predictor.features import FEATURES, Series, add_fleet, worker_row

HORIZON_S = 30.0
CLASSES = ("healthy", "degraded", "failing")
FAILURE_PREFIXES = ("process killed", "process exited", "heartbeat timed out")


class DatasetError(ValueError):
    """A run folder or table cannot be turned into training rows."""


def epoch_s(values: pd.Series) -> pd.Series:
    """Timestamps (PostgreSQL's text form) as seconds since the epoch, whatever the unit
    pandas stores them in."""
    ts = pd.to_datetime(values, utc=True, format="ISO8601")
    return (ts - pd.Timestamp(0, tz="UTC")).dt.total_seconds()


def samples_frame(raw: pd.DataFrame) -> pd.DataFrame:
    """worker_health.csv (or the table) to the sample columns features use."""
    need = {"worker_id", "sampled_at", "rss_bytes", "cpu_percent", "loop_lag_ms", "in_flight",
            "completed", "failed", "duration_p99_ms"}
    missing = need - set(raw.columns)
    if missing:
        raise DatasetError(f"health samples lack columns: {', '.join(sorted(missing))}")
    out = pd.DataFrame({
        "worker_id": raw["worker_id"].astype(str),
        "t": epoch_s(raw["sampled_at"]),
        "rss_mb": raw["rss_bytes"] / 2**20,
        "cpu_percent": raw["cpu_percent"], "loop_lag_ms": raw["loop_lag_ms"],
        "in_flight": raw["in_flight"], "completed": raw["completed"], "failed": raw["failed"],
        "timed_out": raw.get("timed_out", 0),
        "duration_p99_ms": raw["duration_p99_ms"],
    })
    return out.sort_values(["worker_id", "t"]).reset_index(drop=True)


def sampling_interval(samples: pd.DataFrame) -> float:
    gaps = samples.groupby("worker_id")["t"].diff().dropna()
    return float(gaps.median()) if len(gaps) else 1.0


def outcomes(samples: pd.DataFrame, workers: pd.DataFrame, *, interval: float,
             abrupt: set[str], acted: dict[str, float],
             fatal: frozenset[str] = frozenset()) -> pd.DataFrame:
    """Per worker: when it failed (NaN: it did not), the kind, and when its outcome stops
    being known (censor_at; NaN for failures). `fatal`: workers given a fatal fault; one that
    did not fail (and was not replaced on a prediction) is unknown from its first sample."""
    last = samples.groupby("worker_id")["t"].max()
    first = samples.groupby("worker_id")["t"].min()
    info = workers.set_index("id") if len(workers) else pd.DataFrame()
    rows = []
    for wid, last_t in last.items():
        reason = str(info.at[wid, "failure_reason"]) if wid in info.index else ""
        stopped = info.at[wid, "stopped_at"] if wid in info.index else None
        stop_t = epoch_s(pd.Series([stopped])).iloc[0] if isinstance(stopped, str) else np.nan
        failed = wid in info.index and info.at[wid, "status"] == "FAILED" and \
            reason.startswith(FAILURE_PREFIXES) and wid not in acted
        if failed:
            fail_t = min(x for x in (stop_t, last_t + 2 * interval) if np.isfinite(x))
            rows.append({"worker_id": wid, "failure_at": fail_t, "censor_at": np.nan,
                         "kind": "abrupt" if wid in abrupt else "gradual", "reason": reason})
        else:
            censor = acted.get(str(wid), stop_t if np.isfinite(stop_t) else last_t)
            if str(wid) in fatal and str(wid) not in acted:
                censor = float(first[wid])  # its failure was coming, unseen: unknown
            rows.append({"worker_id": wid, "failure_at": np.nan,
                         "censor_at": min(censor, last_t + 2 * interval), "kind": "",
                         "reason": reason})
    return pd.DataFrame(rows, columns=["worker_id", "failure_at", "censor_at", "kind", "reason"])


def is_degraded(df: pd.DataFrame, interval: float) -> pd.Series:
    return ((df["p99_rel"] >= 2.0) | (df["lag_max_ms"] >= 250) | (df["rss_rel"] >= 1.5)
            | (df["hb_gap_max_s"] >= 2.5 * interval)).fillna(False)


def label_rows(rows: pd.DataFrame, out: pd.DataFrame, *, horizon_s: float,
               interval: float) -> pd.DataFrame:
    """Attach labels; drop rows after a failure and rows with an unknown outcome."""
    df = rows.merge(out, on="worker_id", how="left")
    fails = df["failure_at"].notna()
    keep = np.where(fails, df["t"] < df["failure_at"], df["t"] <= df["censor_at"] - horizon_s)
    df = df[keep].copy()
    soon = df["failure_at"].notna() & (df["failure_at"] - df["t"] <= horizon_s)
    onset = df["onset"] if "onset" in df else pd.Series(np.nan, index=df.index)
    on_path = df["failure_at"].notna() & (df["kind"] == "gradual") & (df["t"] >= onset)
    failing = soon | on_path
    df["within_horizon"] = soon.to_numpy()
    df["label"] = np.where(failing, "failing",
                           np.where(is_degraded(df, interval), "degraded", "healthy"))
    df["kind"] = df["kind"].fillna("")
    return df


def grid_rows(samples: pd.DataFrame, step_s: float) -> pd.DataFrame:
    """Feature rows at whole multiples of `step_s`, for each worker from its first sample to
    its last (plus the two intervals in which it may already have stopped answering)."""
    interval = sampling_interval(samples)
    rows = []
    for wid, df in samples.groupby("worker_id"):
        s = Series.from_frame(str(wid), df)
        first, last = float(s.t[0]), float(s.t[-1]) + 2 * interval
        for now in np.arange(np.ceil(first / step_s) * step_s, last, step_s):
            row = worker_row(s, float(now))
            if row is not None:
                rows.append({"worker_id": wid, "t": float(now), **row})
    if not rows:
        raise DatasetError("no health samples to build rows from")
    return add_fleet(pd.DataFrame(rows), by="t")


def journal_items(verdict: dict[str, Any], key: str) -> list[Any]:
    """What the drill's journal results list under `key` ("degraded": dicts with worker_id and
    mode; "killed": worker ids), every entry in order."""
    out: list[Any] = []
    drill = verdict.get("drill") or {}
    for entry in drill.get("journal", []) if isinstance(drill, dict) else []:
        result = entry.get("result") or {}
        out += (result.get(key) or []) if isinstance(result, dict) else []
    return out


def _journal_workers(verdict: dict[str, Any], key: str) -> set[str]:
    return {item["worker_id"] if isinstance(item, dict) else str(item)
            for item in journal_items(verdict, key)}


def fatal_onsets(verdict: dict[str, Any]) -> dict[str, float]:
    """When each worker was given a fatal fault (epoch seconds; the first, if several), for
    journals that record it (`injected_at`)."""
    out: dict[str, float] = {}
    for item in journal_items(verdict, "degraded"):
        if isinstance(item, dict) and item.get("mode") in FATAL_MODES \
                and isinstance(item.get("injected_at"), int | float):
            out.setdefault(str(item["worker_id"]), float(item["injected_at"]))
    return out


def worker_hours(workers: pd.DataFrame) -> pd.Series:
    """Each worker's life in hours (workers.csv read as text): registration to stop, or to its
    last heartbeat while it still runs."""
    ends = workers["stopped_at"].where(workers["stopped_at"] != "", workers["last_heartbeat_at"])
    return ((epoch_s(ends) - epoch_s(workers["registered_at"])).clip(lower=0) / 3600).fillna(0)


def read_predictions(run_dir: Path) -> pd.DataFrame:
    """A run's predictions.csv (the live predictor's verdicts and what was done about them),
    read once: ids, verdicts and actions as text."""
    return pd.read_csv(run_dir / runfolder.PREDICTIONS,
                       dtype={"worker_id": str, "verdict": str, "action": str})


def first_firings(preds: pd.DataFrame) -> pd.DataFrame:
    """The row of each worker's first firing: action "fire" (acted on) or "holdout" (scored,
    never acted on)."""
    return preds[preds["action"].isin(("fire", "holdout"))].drop_duplicates("worker_id")


def failing_per_round(preds: pd.DataFrame) -> pd.Series:
    """How many workers scored `failing` in each round (by its time `t`)."""
    return preds[preds["verdict"] == "failing"].groupby("t").size()


def _acted(run_dir: Path) -> dict[str, float]:
    """Workers the predictor replaced (not hold-outs), with the time it acted."""
    path = run_dir / runfolder.PREDICTIONS
    if not path.exists():
        return {}
    p = pd.read_csv(path)
    done = p[p["action"] == "replace"]
    return {str(w): float(t) for w, t in done.groupby("worker_id")["t"].min().items()}


def file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def run_rows(run_dir: Path, *, horizon_s: float = HORIZON_S, step_s: float = 1.0
             ) -> pd.DataFrame:
    """Labelled rows of one run folder."""
    health = run_dir / runfolder.WORKER_HEALTH
    if not health.exists():
        raise DatasetError(f"{run_dir} has no worker_health.csv (not a finished run folder)")
    samples = samples_frame(pd.read_csv(health))
    workers = pd.read_csv(run_dir / runfolder.WORKERS) if (run_dir / runfolder.WORKERS).exists() \
        else pd.DataFrame(columns=["id", "status", "stopped_at", "failure_reason"])
    verdict = json.loads((run_dir / runfolder.VERDICT).read_text()) \
        if (run_dir / runfolder.VERDICT).exists() else {}
    interval = sampling_interval(samples)
    fatal = frozenset(str(d["worker_id"]) for d in journal_items(verdict, "degraded")
                      if isinstance(d, dict) and d.get("mode") in FATAL_MODES)
    out = outcomes(samples, workers, interval=interval,
                   abrupt=_journal_workers(verdict, "killed"), acted=_acted(run_dir),
                   fatal=fatal)
    out["onset"] = out["worker_id"].map(fatal_onsets(verdict)).astype(float)
    df = label_rows(grid_rows(samples, step_s), out, horizon_s=horizon_s, interval=interval)
    df["faulted"] = df["worker_id"].isin(_journal_workers(verdict, "degraded"))
    df["sampling_interval_s"] = interval
    df.insert(0, "run", run_dir.name)
    return df


def used_in_training(meta: dict[str, Any], run_dirs: Iterable[Path]) -> list[str]:
    """The run folders among `run_dirs` that trained the model whose card is `meta`: the same
    health samples (by hash, whatever the folder is called now) or the same run name."""
    trained = meta.get("sources") or []
    hashes = {s.get(runfolder.WORKER_HEALTH) for s in trained} - {None}
    names = set(meta.get("runs") or []) | {s.get("run") for s in trained}
    used = []
    for run_dir in map(Path, run_dirs):
        samples = run_dir / runfolder.WORKER_HEALTH
        if run_dir.name in names or (samples.is_file() and file_hash(samples) in hashes):
            used.append(str(run_dir))
    return used


def build(run_dirs: Iterable[Path], *, horizon_s: float = HORIZON_S) -> tuple[pd.DataFrame,
                                                                              list[dict[str, str]]]:
    """Rows of several runs, ordered by time, and the sources with their hashes."""
    frames, sources = [], []
    for run_dir in run_dirs:
        frames.append(run_rows(Path(run_dir), horizon_s=horizon_s))
        sources.append({"run": Path(run_dir).name,
                        runfolder.WORKER_HEALTH: file_hash(Path(run_dir) / runfolder.WORKER_HEALTH),
                        runfolder.WORKERS: file_hash(Path(run_dir) / runfolder.WORKERS)})
    if not frames:
        raise DatasetError("give at least one run folder")
    df = pd.concat(frames, ignore_index=True)
    order = df.groupby("run")["t"].min().sort_values().index
    df["run"] = pd.Categorical(df["run"], categories=list(order), ordered=True)
    return df.sort_values(["run", "t", "worker_id"]).reset_index(drop=True), sources


__all__ = ["CLASSES", "FEATURES", "HORIZON_S", "DatasetError", "build", "fatal_onsets",
           "label_rows", "outcomes", "run_rows"]
