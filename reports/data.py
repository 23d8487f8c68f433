"""Reading a run folder into pandas frames, and the numbers a report shows. Percentiles come
from the raw samples (every request, every job), never averaged across intervals."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core.contract import runfolder
from core.contract.figures import percentile as nearest_rank

PCTS = (50, 90, 95, 99, 99.9)


@dataclass
class RunData:
    path: Path
    verdict: dict[str, Any]
    requests: pd.DataFrame  # ts, method, name, response_time_ms, bytes, ok, error
    jobs: pd.DataFrame
    samples: pd.DataFrame
    workers: pd.DataFrame
    executions: pd.DataFrame
    predictions: pd.DataFrame  # the supervisor's verdict log, empty without a predictor
    predictor: dict[str, Any]  # its policy and model (predictions.json), empty without one


def load_run(path: Path) -> RunData:
    if not (path / runfolder.VERDICT).exists():
        raise FileNotFoundError(f"{path} is not a run folder (no verdict.json)")
    raw = [pd.read_csv(p) for p in sorted((path / runfolder.RAW).glob("requests-*.csv"))]
    requests = pd.concat(raw, ignore_index=True) if raw else pd.DataFrame(
        columns=["ts", "method", "name", "response_time_ms", "bytes", "ok", "error"])
    jobs = pd.read_csv(path / runfolder.JOBS, parse_dates=["created_at", "started_at",
                                                        "completed_at"])
    samples = pd.read_csv(path / runfolder.SAMPLES)
    def optional(name: str) -> pd.DataFrame:
        return pd.read_csv(path / name) if (path / name).exists() else pd.DataFrame()

    return RunData(path=path, verdict=json.loads((path / runfolder.VERDICT).read_text()),
                   requests=requests, jobs=jobs, samples=samples,
                   workers=optional(runfolder.WORKERS), executions=optional(runfolder.EXECUTIONS),
                   predictions=optional(runfolder.PREDICTIONS),
                   predictor=json.loads((path / runfolder.PREDICTIONS_META).read_text())
                   if (path / runfolder.PREDICTIONS_META).exists() else {})


def percentile(values: pd.Series, pct: float) -> float | None:
    """Nearest-rank percentile of raw values (what `loadtests.verdict` computes too)."""
    return nearest_rank(values.dropna().astype(float).tolist(), pct)


def operation_table(requests: pd.DataFrame) -> pd.DataFrame:
    """Per operation: count, error rate, p50/p90/p95/p99/p99.9 and max of successes (ms)."""
    rows = []
    for name, group in requests.groupby("name", sort=True):
        ok = group[group["ok"] == 1]["response_time_ms"]
        row: dict[str, Any] = {"operation": name, "count": len(group),
                               "error_rate": round(1 - len(ok) / len(group), 4)}
        for p in PCTS:
            row[f"p{p:g}_ms"] = percentile(ok, p)
        row["max_ms"] = float(ok.max()) if len(ok) else None
        rows.append(row)
    return pd.DataFrame(rows)


def latency_over_time(requests: pd.DataFrame, names: list[str], bucket_s: float = 1.0
                      ) -> pd.DataFrame:
    """Per second of the run: p50/p95/p99/max of the given operations (raw, per bucket)."""
    ok = requests[(requests["ok"] == 1) & requests["name"].isin(names)].copy()
    if ok.empty:
        return pd.DataFrame(columns=["t_s", "p50", "p95", "p99", "max"])
    t0 = ok["ts"].min()
    ok["t_s"] = ((ok["ts"] - t0) // bucket_s) * bucket_s
    g = ok.groupby("t_s")["response_time_ms"]
    frame = pd.DataFrame({"p50": g.quantile(0.5), "p95": g.quantile(0.95),
                          "p99": g.quantile(0.99), "max": g.max()})
    # seconds without a successful request stay empty, so plotted lines break there
    full = np.arange(0, frame.index.max() + bucket_s, bucket_s)
    return frame.reindex(full).rename_axis("t_s").reset_index()


def throughput(samples: pd.DataFrame, bin_s: float = 1.0) -> pd.DataFrame:
    """Jobs created, completed, dead and cancelled per second, from the 1 s samples taken
    `bin_s` apart (the last sample of each bin)."""
    s = samples.sort_values("elapsed_s")
    if bin_s > 1 and len(s):
        s = s.groupby(s["elapsed_s"] // bin_s, sort=True).last().reset_index(drop=True)
    dt = s["elapsed_s"].diff()
    created = s[["WAITING", "PENDING", "PROCESSING", "COMPLETED", "DEAD",
                 "CANCELLED"]].sum(axis=1)
    out = pd.DataFrame({"t_s": s["elapsed_s"],
                        "created": created.diff() / dt,
                        "completed": s["COMPLETED"].diff() / dt,
                        "dead": s["DEAD"].diff() / dt,
                        "cancelled": s["CANCELLED"].diff() / dt})
    return out.dropna()


def execution_summary(executions: pd.DataFrame) -> dict[str, int]:
    """Attempts and how they ended: abandoned (the worker was lost holding the lease),
    timed out, retries (attempts after a job's first)."""
    if executions.empty:
        return {"executions": 0, "abandoned": 0, "timed_out": 0, "retries": 0}
    status = executions["status"].value_counts()
    per_job = executions.groupby("job_id").size()
    return {"executions": len(executions), "abandoned": int(status.get("LEASE_EXPIRED", 0)),
            "timed_out": int(status.get("TIMED_OUT", 0)),
            "retries": int((per_job - 1).clip(lower=0).sum())}


def tenant_table(jobs: pd.DataFrame) -> list[dict[str, Any]]:
    """Per tenant: jobs submitted, completed, share of all completions, share of the starts
    made while every tenant still had jobs to start (until the first one started its last:
    under a backlog, the fair share the scheduler gave it), and queue wait percentiles of
    its completed jobs (raw values)."""
    if "tenant" not in jobs or jobs["tenant"].isna().all():
        return []
    done = jobs[jobs["status"] == "COMPLETED"]
    tenants = jobs["tenant"].fillna("(none)")
    contended = pd.Series(dtype=object)
    if "started_at" in jobs:
        started = jobs["started_at"].notna()
        # when each tenant ran out of jobs to start (never, while one of its jobs has not)
        ran_out = jobs["started_at"].groupby(tenants).max()[
            started.groupby(tenants).all()]
        if len(ran_out):
            contended = tenants[started & (jobs["started_at"] <= ran_out.min())]
    rows = []
    for tenant, group in jobs.groupby(tenants, sort=True):
        finished = done.loc[group.index.intersection(done.index)]
        rows.append({
            "tenant": tenant, "jobs": len(group), "completed": len(finished),
            "share_of_completed": round(len(finished) / len(done), 4) if len(done) else None,
            "share_contended": (round(float((contended == tenant).mean()), 4)
                                if len(contended) else None),
            "queue_wait_p50_ms": percentile(finished["queue_wait_ms"], 50),
            "queue_wait_p99_ms": percentile(finished["queue_wait_ms"], 99),
        })
    return rows


def jain_index(values: list[float]) -> float | None:
    """Jain's fairness index: 1 = perfectly even, 1/n = one worker did everything."""
    x = np.asarray(values, dtype=float)
    if x.size == 0 or not x.any():
        return None
    return float(x.sum() ** 2 / (x.size * (x ** 2).sum()))


def e2e_split(jobs: pd.DataFrame) -> pd.DataFrame:
    """Completed jobs' end-to-end time split into queue wait and processing (ms)."""
    done = jobs[jobs["status"] == "COMPLETED"].copy()
    done["processing_ms"] = done["end_to_end_ms"] - done["queue_wait_ms"]
    return done[["queue_wait_ms", "processing_ms", "end_to_end_ms"]]
