"""`jobharness report compare BASE CANDIDATE`: each metric side by side with its change, and a
regression flag only when the difference is beyond the runs' noise.

Which test decides: for latency percentiles, a seeded bootstrap of the raw samples of both
runs (2,000 resamples); a regression is a worsening of more than `min_change` (5 %) whose
95 % confidence interval of the difference excludes zero. For error rates, a two-proportion
z-test at the 1 % level plus the same minimum change; the same test judges the shares of
attempts abandoned (a worker lost holding the lease), timed out and retried. Throughput is
shown, not judged: one number per run carries no noise estimate.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from reports.data import RunData, execution_summary, load_run, percentile

CREATE_OPS = ("POST /jobs", "POST /jobs/batch")


def _creates(run: RunData) -> np.ndarray:
    r = run.requests
    ok = r[(r["ok"] == 1) & r["name"].isin(CREATE_OPS)]["response_time_ms"]
    return ok.to_numpy(dtype=float)


def _e2e(run: RunData) -> np.ndarray:
    j = run.jobs
    return j[j["status"] == "COMPLETED"]["end_to_end_ms"].dropna().to_numpy(dtype=float)


def bootstrap_diff(base: np.ndarray, cand: np.ndarray, pct: float, *, n: int = 2000,
                   seed: int = 1) -> tuple[float, float]:
    """95 % interval of percentile(cand) - percentile(base) by resampling both."""
    rng = np.random.default_rng(seed)
    b = np.percentile(rng.choice(base, (n, base.size)), pct, axis=1)
    c = np.percentile(rng.choice(cand, (n, cand.size)), pct, axis=1)
    lo, hi = np.percentile(c - b, [2.5, 97.5])
    return float(lo), float(hi)


def latency_row(name: str, base: np.ndarray, cand: np.ndarray, pct: float,
                 min_change: float) -> dict[str, Any]:
    import pandas as pd

    bv = percentile(pd.Series(base), pct) if base.size else None
    cv = percentile(pd.Series(cand), pct) if cand.size else None
    row: dict[str, Any] = {"metric": name, "base": bv, "candidate": cv, "change_pct": None,
                           "regression": False, "test": "bootstrap 95% CI"}
    if bv and cv is not None and base.size >= 20 and cand.size >= 20:
        lo, hi = bootstrap_diff(base, cand, pct)
        row["change_pct"] = round(100 * (cv - bv) / bv, 1)
        row["ci_ms"] = [round(lo, 3), round(hi, 3)]
        row["regression"] = lo > 0 and cv > bv * (1 + min_change)
    return row


def _error_row(base: RunData, cand: RunData, min_change: float) -> dict[str, Any]:
    n1, n2 = len(base.requests), len(cand.requests)
    f1 = int((base.requests["ok"] != 1).sum()) if n1 else 0
    f2 = int((cand.requests["ok"] != 1).sum()) if n2 else 0
    return proportion_row("error_rate", f1, n1, f2, n2, min_change)


def proportion_row(name: str, f1: int, n1: int, f2: int, n2: int, min_change: float
                   ) -> dict[str, Any]:
    """A share of events (errors per request, abandoned attempts per attempt) judged by a
    one-sided two-proportion z-test at the 1 % level plus the minimum change."""
    p1, p2 = (f1 / n1 if n1 else 0.0), (f2 / n2 if n2 else 0.0)
    pooled = (f1 + f2) / (n1 + n2) if n1 + n2 else 0.0
    se = math.sqrt(pooled * (1 - pooled) * (1 / max(n1, 1) + 1 / max(n2, 1)))
    z = (p2 - p1) / se if se > 0 else 0.0
    return {"metric": name, "base": round(p1, 5), "candidate": round(p2, 5),
            "counts": [f1, f2],
            "change_pct": round(100 * (p2 - p1) / p1, 1) if p1 else None,
            "regression": z > 2.326 and p2 > p1 * (1 + min_change) and p2 - p1 > 0.001,
            "test": f"two-proportion z = {z:.2f}"}


def _execution_rows(base: RunData, cand: RunData, min_change: float) -> list[dict[str, Any]]:
    b, c = execution_summary(base.executions), execution_summary(cand.executions)
    return [proportion_row(f"{key}_per_execution", b[key], b["executions"], c[key],
                           c["executions"], min_change)
            for key in ("abandoned", "timed_out", "retries")]


def compare(base_dir: Path, cand_dir: Path, out: Path, *, min_change: float = 0.05
            ) -> dict[str, Any]:
    base, cand = load_run(base_dir), load_run(cand_dir)
    rows = []
    for name, values in (("create", (_creates(base), _creates(cand))),
                         ("end_to_end", (_e2e(base), _e2e(cand)))):
        for pct in (50, 99):
            rows.append(latency_row(f"{name}_p{pct}_ms", *values, pct, min_change))
    rows.append(_error_row(base, cand, min_change))
    rows += _execution_rows(base, cand, min_change)
    tb = base.verdict.get("figures", {}).get("throughput_jobs_s")
    tc = cand.verdict.get("figures", {}).get("throughput_jobs_s")
    rows.append({"metric": "throughput_jobs_s", "base": tb, "candidate": tc,
                 "change_pct": round(100 * (tc - tb) / tb, 1) if tb and tc else None,
                 "regression": False, "test": "shown only (no noise estimate)"})
    out.mkdir(parents=True, exist_ok=True)
    plot = _overlay(base, cand, out / "compare_latency.png")
    result = {"base": str(base_dir), "candidate": str(cand_dir), "metrics": rows,
              "regressions": [r["metric"] for r in rows if r["regression"]], "plot": str(plot)}
    md = out / "compare.md"
    md.write_text(compare_markdown(result))
    result["markdown"] = str(md)
    return result


def compare_markdown(result: dict[str, Any]) -> str:
    lines = [f"# {Path(result['base']).name} -> {Path(result['candidate']).name}", "",
             "| metric | base | candidate | change | regression | decided by |",
             "|---|---|---|---|---|---|"]
    for r in result["metrics"]:
        change = "" if r["change_pct"] is None else f"{r['change_pct']:+.1f} %"
        lines.append(f"| {r['metric']} | {r['base']} | {r['candidate']} | {change} | "
                     f"{'**yes**' if r['regression'] else 'no'} | {r['test']} |")
    return "\n".join(lines) + "\n"


def _overlay(base: RunData, cand: RunData, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(9, 4))
    pct = np.array([0, 50, 75, 90, 95, 99, 99.9])
    x = 1 / (1 - pct / 100)
    for run, label in ((base, "base"), (cand, "candidate")):
        for values, style, what in ((_creates(run), "-", "create"), (_e2e(run), "--", "e2e")):
            if values.size:
                ax.plot(x, np.percentile(values, pct), style, marker="o", ms=3,
                        label=f"{label} {what}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(x, [f"{p:g}%" for p in pct], fontsize=7)
    ax.set(title="Base vs candidate: latency by percentile", xlabel="percentile",
           ylabel="ms (log)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
