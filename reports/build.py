"""`jobharness report RUN_DIR`: report.html (one self-contained file, images embedded),
summary.md, summary.json and the PNG figures, in RUN_DIR/report/."""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path
from typing import Any

from core.contract import runfolder
from reports.data import (
    execution_summary,
    load_run,
    operation_table,
    percentile,
    tenant_table,
)
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
    figures, extra = all_figures(run, run_dir / runfolder.REPORT)
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
        "executions": execution_summary(run.executions),
        "tenants": tenant_table(jobs),
        "predictor": predictor_summary(run),
        "operations": ops.to_dict(orient="records"),
        "slos": v.get("slos", []), "invariants": v.get("invariants", []),
        "faults": [{**f, "target": fault_target(f)}
                   for f in (v.get("drill") or {}).get("faults", [])], **extra,
    }
    return data, figures


def fault_target(fault: dict[str, Any]) -> str:
    """What a fault hit, as the report names it: a store (and how), or a process."""
    args = fault.get("args") or {}
    target = str(args.get("target") or args.get("process") or "")
    how = args.get("mode")
    return f"{target} ({how})" if target and how else target


def predictor_summary(run: Any) -> dict[str, Any] | None:
    p = run.predictions
    if p.empty:
        return None
    return {"scores": int((p["verdict"].fillna("") != "").sum()),
            "replaced": int(p.loc[p["action"] == "replace", "worker_id"].nunique()),
            "held_out_flagged": int(p.loc[p["action"] == "holdout", "worker_id"].nunique()),
            **{k: run.predictor.get(k) for k in ("threshold", "k", "holdout", "model")}}


def _table(rows: list[dict[str, Any]], cols: list[str]) -> list[str]:
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return out


def markdown(data: dict[str, Any]) -> str:
    verdict = "PASSED" if data["passed"] else "FAILED: " + ", ".join(data["breaches"])
    lines = [f"# {data['run_id']}", "",
             f"Scenario `{data['scenario']}` ({data['model']} model): **{verdict}**", "",
             "Jobs: " + ", ".join(f"{n} {k}" for k, n in data["jobs"].items()), "",
             "| completed jobs (ms) | p50 | p90 | p99 | p99.9 |", "|---|---|---|---|---|",
             *(f"| {label} | " + " | ".join(_fmt(data[key].get(p))
                                           for p in ("p50", "p90", "p99", "p99.9")) + " |"
               for label, key in (("end to end", "end_to_end_ms"),
                                  ("queue wait", "queue_wait_ms"))), "",
             "Executions: {executions} attempts, {abandoned} abandoned (worker lost holding "
             "the lease), {timed_out} timed out, {retries} retries".format(
                 **data["executions"]), ""]
    if data.get("predictor"):
        p = data["predictor"]
        lines += [f"Predictor: {p['scores']} scores, {p['replaced']} workers replaced on "
                  f"prediction, {p['held_out_flagged']} held-out workers flagged "
                  f"(threshold {p.get('threshold')}, k {p.get('k')})", ""]
    lines += ["## Operations", ""]
    lines += _table(data["operations"], ["operation", "count", "error_rate", "p50_ms",
                                         "p90_ms", "p95_ms", "p99_ms", "p99.9_ms", "max_ms"])
    if data.get("tenants"):
        lines += ["", "## Tenants", "", *_table(data["tenants"], [
            "tenant", "jobs", "completed", "share_of_completed", "share_contended",
            "queue_wait_p50_ms",
            "queue_wait_p99_ms"])]
    lines += ["", "## SLOs", "", *_table(data["slos"], ["name", "value", "limit", "ok"])]
    lines += ["", "## Invariants", "", *_table(data["invariants"], ["name", "violations", "ok"])]
    if data["faults"]:
        cols = ["name", "target", "start_s", "end_s", "throughput_before_jobs_s",
                "throughput_during_jobs_s", "recovery_s"]
        lines += ["", "## Faults", "", *_table(data["faults"], cols)]
    if data.get("jain_fairness_index") is not None:
        lines += ["", f"Work per worker: Jain's fairness index "
                      f"{data['jain_fairness_index']:.3f}"]
    return "\n".join(lines) + "\n"


def _inline(text: str) -> str:
    out = html.escape(text)
    out = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", out)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", out)


def md_to_html(md: str) -> str:
    """The Markdown this module writes (headings, pipe tables, paragraphs) as HTML."""
    out: list[str] = []
    table: list[list[str]] = []

    def flush() -> None:
        if table:
            head, *body = table
            out.append("<table><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in head)
                       + "</tr>" + "".join("<tr>" + "".join(
                           f"<td>{_inline(c)}</td>" for c in row) + "</tr>" for row in body)
                       + "</table>")
            table.clear()

    for line in md.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not all(set(c) <= {"-", ":"} for c in cells):
                table.append(cells)
            continue
        flush()
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            out.append(f"<h{level}>{_inline(line[level:].strip())}</h{level}>")
        elif line.strip():
            out.append(f"<p>{_inline(line)}</p>")
    flush()
    return "\n".join(out)


def html_report(data: dict[str, Any], figures: list[Path], md: str) -> str:
    imgs = "\n".join(
        f'<figure><img alt="{p.stem}" src="data:image/png;base64,'
        f'{base64.b64encode(p.read_bytes()).decode()}"/></figure>' for p in figures)
    style = ("body{font-family:sans-serif;max-width:1000px;margin:auto;padding:0 1em}"
             "table{border-collapse:collapse;margin:.5em 0;font-size:90%}"
             "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}"
             "td:first-child,th:first-child{text-align:left}th{background:#f0f0f0}"
             "img{max-width:100%}figure{margin:1em 0}")
    return (f"<!doctype html><html><head><meta charset='utf-8'>"
            f"<title>{html.escape(str(data['run_id']))}</title><style>{style}</style></head>"
            f"<body>{md_to_html(md)}<h2>Figures</h2>{imgs}</body></html>")


def build_report(run_dir: Path) -> dict[str, Any]:
    data, figures = summary(run_dir)
    out = run_dir / runfolder.REPORT
    md = markdown(data)
    (out / "summary.json").write_text(json.dumps(data, indent=2, default=str))
    (out / "summary.md").write_text(md)
    (out / "report.html").write_text(html_report(data, figures, md))
    return {runfolder.REPORT: str(out / "report.html"), "summary": str(out / "summary.md"),
            "figures": [str(p) for p in figures]}
