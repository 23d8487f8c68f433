"""`jobharness report RUN_DIR`: report.html (one self-contained file, images embedded),
summary.md, summary.json and the PNG figures, in RUN_DIR/report/."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from reports.data import load_run, operation_table, percentile
from reports.figures import all_figures


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def summary(run_dir: Path) -> tuple[dict[str, Any], list[Path]]:
    run = load_run(run_dir)
    ops = operation_table(run.requests)
    figures, extra = all_figures(run, run_dir / "report")
    jobs = run.jobs
    done = jobs[jobs["status"] == "COMPLETED"]
    v = run.verdict
    data = {
        "run_id": v.get("run_id"), "scenario": v.get("scenario"), "model": v.get("model"),
        "passed": v.get("passed"), "breaches": v.get("breaches", []),
        "timings": v.get("timings", {}),
        "jobs": {"total": len(jobs), **jobs["status"].value_counts().to_dict()},
        "end_to_end_ms": {f"p{p:g}": percentile(done["end_to_end_ms"], p)
                          for p in (50, 90, 99, 99.9)},
        "queue_wait_ms": {f"p{p:g}": percentile(done["queue_wait_ms"], p)
                          for p in (50, 90, 99, 99.9)},
        "operations": ops.to_dict(orient="records"),
        "slos": v.get("slos", []), "invariants": v.get("invariants", []),
        "faults": (v.get("drill") or {}).get("faults", []), **extra,
    }
    return data, figures


def _table(rows: list[dict[str, Any]], cols: list[str]) -> list[str]:
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return out


def markdown(data: dict[str, Any]) -> str:
    verdict = "PASSED" if data["passed"] else "FAILED: " + ", ".join(data["breaches"])
    lines = [f"# {data['run_id']}", "",
             f"Scenario `{data['scenario']}` ({data['model']} model): **{verdict}**", "",
             f"Jobs: {data['jobs']}", "",
             f"End-to-end (ms): {data['end_to_end_ms']}", "", "## Operations", ""]
    lines += _table(data["operations"], ["operation", "count", "error_rate", "p50_ms",
                                         "p90_ms", "p95_ms", "p99_ms", "p99.9_ms", "max_ms"])
    lines += ["", "## SLOs", "", *_table(data["slos"], ["name", "value", "limit", "ok"])]
    lines += ["", "## Invariants", "", *_table(data["invariants"], ["name", "violations", "ok"])]
    if data["faults"]:
        cols = ["name", "start_s", "end_s", "throughput_before_jobs_s",
                "throughput_during_jobs_s", "recovery_s"]
        lines += ["", "## Faults", "", *_table(data["faults"], cols)]
    if data.get("jain_fairness_index") is not None:
        lines += ["", f"Work per worker: Jain's fairness index "
                      f"{data['jain_fairness_index']:.3f}"]
    return "\n".join(lines) + "\n"


def html_report(data: dict[str, Any], figures: list[Path], md: str) -> str:
    imgs = "\n".join(
        f'<figure><img alt="{p.stem}" src="data:image/png;base64,'
        f'{base64.b64encode(p.read_bytes()).decode()}"/></figure>' for p in figures)
    body = html.escape(md)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{data['run_id']}"
            "</title><style>body{font-family:sans-serif;max-width:1000px;margin:auto}"
            "pre{white-space:pre-wrap;background:#f6f6f6;padding:1em}img{max-width:100%}"
            f"</style></head><body><h1>{html.escape(str(data['run_id']))}</h1>"
            f"<pre>{body}</pre>{imgs}</body></html>")


def build_report(run_dir: Path) -> dict[str, Any]:
    data, figures = summary(run_dir)
    out = run_dir / "report"
    md = markdown(data)
    (out / "summary.json").write_text(json.dumps(data, indent=2, default=str))
    (out / "summary.md").write_text(md)
    (out / "report.html").write_text(html_report(data, figures, md))
    return {"report": str(out / "report.html"), "summary": str(out / "summary.md"),
            "figures": [str(p) for p in figures]}
