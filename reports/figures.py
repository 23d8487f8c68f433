"""The report's figures (matplotlib, Agg): every time axis is seconds since the run started,
every fault window from the drill's journal is shaded and labelled."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from reports.data import RunData, e2e_split, jain_index, latency_over_time, throughput

CREATE_OPS = ["POST /jobs", "POST /jobs/batch"]


def _faults(ax: Any, run: RunData) -> None:
    for i, f in enumerate((run.verdict.get("drill") or {}).get("faults", [])):
        start, end = f["start_s"], max(f["end_s"], f["start_s"] + 0.5)
        ax.axvspan(start, end, color="tab:red", alpha=0.15, lw=0)
        ax.annotate(f["name"], xy=(start, 1), xycoords=("data", "axes fraction"),
                    xytext=(2, -12 - 10 * (i % 3)), textcoords="offset points", fontsize=7,
                    color="tab:red")


def _legend(ax: Any, **kwargs: Any) -> None:
    """A legend only when something was plotted (an empty one warns)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**kwargs)


def _save(fig: Any, out: Path, name: str) -> Path:
    path = out / name
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _run_t0(run: RunData) -> float:
    s = run.samples
    return float(s["ts"].iloc[0] - s["elapsed_s"].iloc[0]) if len(s) else 0.0


def latency(run: RunData, out: Path) -> Path:
    req = run.requests.copy()
    req["ts"] = req["ts"] - _run_t0(run)
    series = latency_over_time(req.assign(ts=req["ts"]), CREATE_OPS)
    fig, ax = plt.subplots(figsize=(9, 4))
    if not series.empty:
        t = series["t_s"] + float(req["ts"].min())
        for col, style in (("p50", "-"), ("p95", "--"), ("p99", "-."), ("max", ":")):
            ax.plot(t, series[col], style, label=col)
        ax.set_yscale("log")
    _faults(ax, run)
    ax.set(title="Create latency per second (raw requests)", xlabel="time since start (s)",
           ylabel="latency (ms, log)")
    _legend(ax, loc="upper right", fontsize=8)
    return _save(fig, out, "latency_over_time.png")


def rates(run: RunData, out: Path) -> Path:
    tp = throughput(run.samples)
    fig, ax = plt.subplots(figsize=(9, 4))
    for col in ("created", "completed", "dead", "cancelled"):
        if col in tp and tp[col].abs().sum() > 0:
            ax.plot(tp["t_s"], tp[col], label=col)
    _faults(ax, run)
    ax.set(title="Throughput", xlabel="time since start (s)", ylabel="jobs per second")
    _legend(ax, loc="upper right", fontsize=8)
    return _save(fig, out, "throughput.png")


def queues(run: RunData, out: Path) -> Path:
    s = run.samples
    fig, ax = plt.subplots(figsize=(9, 4))
    for col in ("high", "medium", "low", "delayed", "processing", "dead_letter", "PENDING"):
        if col in s and s[col].sum() > 0:
            ax.plot(s["elapsed_s"], s[col], label="PENDING (PostgreSQL)" if col == "PENDING"
                    else f"{col} (Redis)")
    _faults(ax, run)
    ax.set(title="Queue depth", xlabel="time since start (s)", ylabel="jobs")
    _legend(ax, loc="upper right", fontsize=8)
    return _save(fig, out, "queue_depth.png")


def workers(run: RunData, out: Path) -> Path:
    s = run.samples
    fig, ax = plt.subplots(figsize=(9, 3.5))
    ax.plot(s["elapsed_s"], s["workers_active"], label="active workers")
    ax.plot(s["elapsed_s"], s["workers_failed"], label="replaced (cumulative)")
    _faults(ax, run)
    ax.set(title="Workers and replacements", xlabel="time since start (s)", ylabel="workers")
    _legend(ax, loc="lower right", fontsize=8)
    return _save(fig, out, "workers.png")


def e2e_distribution(run: RunData, out: Path) -> Path:
    """HDR-style: latency against percentile, the x axis stretched towards the tail."""
    split = e2e_split(run.jobs)
    fig, ax = plt.subplots(figsize=(9, 4))
    pct = np.array([0, 50, 75, 90, 95, 99, 99.5, 99.9, 99.99])
    x = 1 / (1 - pct / 100)
    for col, label in (("queue_wait_ms", "queue wait"), ("processing_ms", "processing"),
                       ("end_to_end_ms", "end to end")):
        values = split[col].dropna()
        if len(values):
            ax.plot(x, np.percentile(values, pct), marker="o", ms=3, label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(x, [f"{p:g}%" for p in pct], fontsize=7)
    ax.set(title="Completed jobs: latency by percentile (PostgreSQL clock)",
           xlabel="percentile", ylabel="ms (log)")
    _legend(ax, loc="upper left", fontsize=8)
    return _save(fig, out, "e2e_distribution.png")


def work_per_worker(run: RunData, out: Path) -> tuple[Path, float | None]:
    done = run.jobs[run.jobs["status"] == "COMPLETED"]["worker_id"].value_counts()
    fairness = jain_index(list(done.values))
    fig, ax = plt.subplots(figsize=(9, 3.5))
    ax.bar(range(len(done)), done.sort_index().values, width=0.8)
    ax.set(title=f"Completed jobs per worker ({len(done)} workers, Jain's fairness index "
                 f"{fairness:.3f})" if fairness is not None else "Completed jobs per worker",
           xlabel="worker (sorted by id)", ylabel="jobs")
    return _save(fig, out, "work_per_worker.png"), fairness


def all_figures(run: RunData, out: Path) -> tuple[list[Path], dict[str, Any]]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [latency(run, out), rates(run, out), queues(run, out), workers(run, out),
             e2e_distribution(run, out)]
    path, fairness = work_per_worker(run, out)
    return [*paths, path], {"jain_fairness_index": fairness}


__all__ = ["all_figures", "pd"]
