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
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter

from reports.data import RunData, e2e_split, jain_index, latency_over_time, throughput

CREATE_OPS = ["POST /jobs", "POST /jobs/batch"]


def _faults(ax: Any, run: RunData) -> None:
    """Shade each fault window (a thin line for an instant) and name each kind of fault once,
    staggered below the top edge so labels do not pile up."""
    named: list[str] = []
    for f in (run.verdict.get("drill") or {}).get("faults", []):
        start, end = f["start_s"], f["end_s"]
        if end - start >= 0.5:
            ax.axvspan(start, end, color="tab:red", alpha=0.15, lw=0)
        else:
            ax.axvline(start, color="tab:red", alpha=0.5, lw=0.8, ls="--")
        target = (f.get("args") or {}).get("target")
        label = f"{f['name']} {target}" if target else f["name"]
        if label not in named:
            named.append(label)
            ax.annotate(label, xy=(start, 1), xycoords=("data", "axes fraction"),
                        xytext=(2, -10 - 9 * (len(named) - 1)), textcoords="offset points",
                        fontsize=7, color="tab:red")


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
    """p50/p95/p99/max per second for each operation (the six busiest), one panel each."""
    req = run.requests.copy()
    req["ts"] = req["ts"] - _run_t0(run)
    names = list(req[req["ok"] == 1]["name"].value_counts().index[:6])
    rows = max(1, len(names))
    fig, axes = plt.subplots(rows, 1, figsize=(9, 1.9 * rows + 0.8), sharex=True,
                             squeeze=False)
    for ax, name in zip(axes[:, 0], names or ["(no requests)"], strict=True):
        series = latency_over_time(req, [name])
        if not series.empty:
            t = series["t_s"] + float(req.loc[req["name"] == name, "ts"].min())
            for col, style in (("p50", "-"), ("p95", "--"), ("p99", "-."), ("max", ":")):
                ax.plot(t, series[col], style, lw=1, label=col)
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_minor_formatter(NullFormatter())
        _faults(ax, run)
        ax.set_title(name, fontsize=9, loc="left")
        ax.set_ylabel("ms (log)", fontsize=8)
    _legend(axes[0, 0], loc="upper right", fontsize=7, ncols=4)
    axes[-1, 0].set_xlabel("time since start (s)")
    fig.suptitle("Latency per second by operation (raw requests)", fontsize=10)
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
    ax.plot(s["elapsed_s"], s["workers_failed"], label="replaced after failing (cumulative)")
    p = run.predictions
    if not p.empty:
        acted = p[p["action"] == "replace"].sort_values("t")
        t = acted["t"].to_numpy(dtype=float) - _run_t0(run)
        ax.step(np.concatenate([[0], t]), np.arange(len(t) + 1), where="post",
                label="replaced on prediction (cumulative)")
    _faults(ax, run)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(title="Workers and replacements", xlabel="time since start (s)", ylabel="workers")
    _legend(ax, loc="center right", fontsize=8)
    return _save(fig, out, "workers.png")


def predictor(run: RunData, out: Path) -> Path | None:
    """Each worker's predicted probability of failing over time, coloured by how it ended,
    with the moments workers failed and were replaced on prediction."""
    p = run.predictions
    if p.empty:
        return None
    t0 = _run_t0(run)
    scored = p[p["verdict"].notna() & (p["verdict"] != "")].copy()
    scored["t_s"] = scored["t"] - t0
    w = run.workers
    failed = w[w["status"] == "FAILED"] if not w.empty else w
    fail_t = {}
    for _, row in failed.iterrows():
        if isinstance(row.get("stopped_at"), str):
            fail_t[row["id"]] = pd.Timestamp(row["stopped_at"]).timestamp() - t0
    acted = set(p.loc[p["action"] == "replace", "worker_id"])
    fig, ax = plt.subplots(figsize=(10, 4))
    styles = {"failed": ("tab:red", 1.0), "replaced on prediction": ("tab:orange", 1.0),
              "lived": ("0.6", 0.5)}
    seen: set[str] = set()
    for wid, g in scored.groupby("worker_id"):
        fate = "replaced on prediction" if wid in acted else (
            "failed" if wid in fail_t else "lived")
        color, lw = styles[fate]
        ax.plot(g["t_s"], g["p_failing"], color=color, lw=lw, alpha=0.8,
                label=fate if fate not in seen else None)
        seen.add(fate)
        if fate == "failed":
            ax.plot([fail_t[wid]], [1.02], marker="v", color="tab:red", ms=5, clip_on=False)
    threshold = run.predictor.get("threshold")
    if threshold is not None:
        ax.axhline(threshold, color="k", lw=0.8, ls="--", label=f"threshold {threshold:g}")
    _faults(ax, run)
    ax.set(title="Predicted probability of failing, per worker (v: a failure)",
           xlabel="time since start (s)", ylabel="P(failing within horizon)", ylim=(0, 1.05))
    _legend(ax, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    return _save(fig, out, "predictor.png")


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
    pred = predictor(run, out)
    return [*paths, path, *([pred] if pred else [])], {"jain_fairness_index": fairness}


__all__ = ["all_figures", "pd"]
