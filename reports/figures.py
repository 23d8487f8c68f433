"""The report's figures (matplotlib, Agg): every time axis is seconds since the run started,
every fault window from the drill's journal is shaded and labelled.

Readable for any run length: time bins grow with the run (at most `MAX_BINS` per series), a
series with few points is drawn with markers, and a figure or panel without data is left out
with a line saying why. Each figure reports the points it drew per series (`Figure.series`),
so what a report shows can be checked on the data, not on pixels."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from reports.data import RunData, e2e_split, jain_index, latency_over_time, throughput

CREATE_OPS = ["POST /jobs", "POST /jobs/batch"]
MAX_BINS = 150  # per time series: bins widen with the run beyond this many seconds
FEW_POINTS = 40  # a series with fewer points than this (or with gaps) gets markers


@dataclass
class Figure:
    """One figure of the report: its file, what it shows, and the points each of its series
    drew (a series that drew none is never listed)."""

    path: Path
    title: str
    series: dict[str, int] = field(default_factory=dict)


@dataclass
class Figures:
    shown: list[Figure] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)  # "what: why", for the report's text
    extra: dict[str, Any] = field(default_factory=dict)


def bin_s(run: RunData) -> float:
    """The width of a time bin: 1 s, widened so no series has more than MAX_BINS bins."""
    s = run.samples
    length = float(s["elapsed_s"].max()) if len(s) else 0.0
    return float(max(1, int(np.ceil(length / MAX_BINS))))


def _plot(ax: Any, fig: Figure, name: str, x: Any, y: Any, *args: Any, **kwargs: Any) -> None:
    """Plot one series, with markers when it has few points or gaps (a lone point drawn as
    a line is invisible), and count its points."""
    y = np.asarray(y, dtype=float)
    points = int(np.count_nonzero(~np.isnan(y)))
    if points == 0:
        return
    if points < FEW_POINTS or points < len(y):
        kwargs.setdefault("marker", "o")
        kwargs.setdefault("ms", 3)
    ax.plot(x, y, *args, **kwargs)
    fig.series[name] = fig.series.get(name, 0) + points


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


def _run_t0(run: RunData) -> float:
    s = run.samples
    return float(s["ts"].iloc[0] - s["elapsed_s"].iloc[0]) if len(s) else 0.0


def latency(run: RunData, out: Path, figs: Figures) -> None:
    """p50/p95/p99/max per time bin for each operation (the six busiest), one panel each;
    an operation with no successful request is left out, and said so."""
    req = run.requests.copy()
    req["ts"] = req["ts"] - _run_t0(run)
    ok = req[req["ok"] == 1]
    for name in sorted(set(req["name"]) - set(ok["name"])):
        figs.left_out.append(f"latency of {name}: no request succeeded")
    names = list(ok["name"].value_counts().index[:6])
    if not names:
        figs.left_out.append("latency per operation: no request succeeded")
        return
    width = bin_s(run)
    fig, axes = plt.subplots(len(names), 1, figsize=(9, 1.9 * len(names) + 0.8), sharex=True,
                             squeeze=False)
    info = Figure(out / "latency_over_time.png",
                  f"Latency per {width:g} s by operation (raw requests)")
    for ax, name in zip(axes[:, 0], names, strict=True):
        series = latency_over_time(req, [name], bucket_s=width)
        t = series["t_s"] + float(ok.loc[ok["name"] == name, "ts"].min())
        for col, style in (("p50", "-"), ("p95", "--"), ("p99", "-."), ("max", ":")):
            _plot(ax, info, f"{name} {col}", t, series[col], style, lw=1, label=col)
        ax.set_yscale("log")
        # 1-2-5 ticks: a panel whose latencies stay within one decade still has numbers
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        _faults(ax, run)
        ax.set_title(f"{name} ({int((ok['name'] == name).sum())} requests)", fontsize=9,
                     loc="left")
        ax.set_ylabel("ms (log)", fontsize=8)
    _legend(axes[0, 0], loc="upper right", fontsize=7, ncols=4)
    axes[-1, 0].set_xlabel("time since start (s)")
    fig.suptitle(info.title, fontsize=10)
    _keep(fig, info, figs)


def rates(run: RunData, out: Path, figs: Figures) -> None:
    width = bin_s(run)
    tp = throughput(run.samples, bin_s=width)
    info = Figure(out / "throughput.png", f"Throughput (jobs per second, {width:g} s bins)")
    fig, ax = plt.subplots(figsize=(9, 4))
    for col in ("created", "completed", "dead", "cancelled"):
        if col in tp and tp[col].abs().sum() > 0:
            _plot(ax, info, col, tp["t_s"], tp[col], label=col)
    _faults(ax, run)
    ax.set(title=info.title, xlabel="time since start (s)", ylabel="jobs per second")
    _legend(ax, loc="upper right", fontsize=8)
    _keep(fig, info, figs, empty="throughput: fewer than two samples, or no job moved")


def queues(run: RunData, out: Path, figs: Figures) -> None:
    s = run.samples
    info = Figure(out / "queue_depth.png", "Queue depth")
    fig, ax = plt.subplots(figsize=(9, 4))
    for col in ("high", "medium", "low", "delayed", "processing", "dead_letter", "PENDING"):
        if col in s and s[col].sum() > 0:
            _plot(ax, info, col, s["elapsed_s"], s[col],
                  label="PENDING (PostgreSQL)" if col == "PENDING" else f"{col} (Redis)")
    _faults(ax, run)
    ax.set(title=info.title, xlabel="time since start (s)", ylabel="jobs")
    _legend(ax, loc="upper right", fontsize=8)
    _keep(fig, info, figs, empty="queue depth: every queue stayed empty in every sample")


def workers(run: RunData, out: Path, figs: Figures) -> None:
    s = run.samples
    info = Figure(out / "workers.png", "Workers and replacements")
    fig, ax = plt.subplots(figsize=(9, 3.5))
    if len(s):
        _plot(ax, info, "active", s["elapsed_s"], s["workers_active"], label="active workers")
        _plot(ax, info, "failed", s["elapsed_s"], s["workers_failed"],
              label="replaced after failing (cumulative)")
    p = run.predictions
    if not p.empty:
        acted = p[p["action"] == "replace"].sort_values("t")
        t = acted["t"].to_numpy(dtype=float) - _run_t0(run)
        ax.step(np.concatenate([[0], t]), np.arange(len(t) + 1), where="post",
                label="replaced on prediction (cumulative)")
        info.series["replaced on prediction"] = len(t) + 1
    _faults(ax, run)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(title=info.title, xlabel="time since start (s)", ylabel="workers")
    _legend(ax, loc="center right", fontsize=8)
    _keep(fig, info, figs, empty="workers: no sample was taken")


def predictor(run: RunData, out: Path, figs: Figures) -> None:
    """Each worker's predicted probability of failing over time, coloured by how it ended,
    with the moments workers failed and were replaced on prediction. Only with a predictor
    (the run was not asked for one otherwise: nothing to say)."""
    p = run.predictions
    if p.empty:
        return
    info = Figure(out / "predictor.png",
                  "Predicted probability of failing, per worker (v: a failure)")
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
        _plot(ax, info, f"p_failing {wid}", g["t_s"], g["p_failing"], color=color, lw=lw,
              alpha=0.8, label=fate if fate not in seen else None, marker="")
        seen.add(fate)
        if fate == "failed":
            ax.plot([fail_t[wid]], [1.02], marker="v", color="tab:red", ms=5, clip_on=False)
    threshold = run.predictor.get("threshold")
    if threshold is not None:
        ax.axhline(threshold, color="k", lw=0.8, ls="--", label=f"threshold {threshold:g}")
    _faults(ax, run)
    ax.set(title=info.title, xlabel="time since start (s)",
           ylabel="P(failing within horizon)", ylim=(0, 1.05))
    _legend(ax, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    _keep(fig, info, figs, empty="predictor: the model scored no worker")


def e2e_distribution(run: RunData, out: Path, figs: Figures) -> None:
    """HDR-style: latency against percentile, the x axis stretched towards the tail."""
    split = e2e_split(run.jobs)
    info = Figure(out / "e2e_distribution.png",
                  "Completed jobs: latency by percentile (PostgreSQL clock)")
    fig, ax = plt.subplots(figsize=(9, 4))
    pct = np.array([0, 50, 75, 90, 95, 99, 99.5, 99.9, 99.99])
    x = 1 / (1 - pct / 100)
    for col, label in (("queue_wait_ms", "queue wait"), ("processing_ms", "processing"),
                       ("end_to_end_ms", "end to end")):
        values = split[col].dropna()
        if len(values):
            _plot(ax, info, label, x, np.percentile(values, pct), marker="o", ms=3,
                  label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(x, [f"{p:g}%" for p in pct], fontsize=7)
    ax.set(title=info.title, xlabel="percentile", ylabel="ms (log)")
    _legend(ax, loc="upper left", fontsize=8)
    _keep(fig, info, figs, empty="latency by percentile: no job completed")


def work_per_worker(run: RunData, out: Path, figs: Figures) -> None:
    done = run.jobs[run.jobs["status"] == "COMPLETED"]["worker_id"].value_counts()
    fairness = jain_index(list(done.values))
    figs.extra["jain_fairness_index"] = fairness
    info = Figure(out / "work_per_worker.png",
                  f"Completed jobs per worker ({len(done)} workers, Jain's fairness index "
                  f"{fairness:.3f})" if fairness is not None else "Completed jobs per worker")
    fig, ax = plt.subplots(figsize=(9, 3.5))
    if len(done):
        ax.bar(range(len(done)), done.sort_index().values, width=0.8)
        info.series["completed"] = len(done)
    ax.set(title=info.title, xlabel="worker (sorted by id)", ylabel="jobs")
    _keep(fig, info, figs, empty="completed jobs per worker: no job completed")


def _keep(fig: Any, info: Figure, figs: Figures, empty: str = "") -> None:
    """Save a figure that drew something; otherwise say in the report why it is missing."""
    if info.series:
        fig.tight_layout()
        fig.savefig(info.path, dpi=110)
        figs.shown.append(info)
    else:
        figs.left_out.append(empty or f"{info.title}: no data")
        info.path.unlink(missing_ok=True)
    plt.close(fig)


def all_figures(run: RunData, out: Path) -> Figures:
    out.mkdir(parents=True, exist_ok=True)
    figs = Figures()
    for draw in (latency, rates, queues, workers, e2e_distribution, work_per_worker,
                 predictor):
        draw(run, out, figs)
    return figs


__all__ = ["Figure", "Figures", "all_figures", "pd"]
