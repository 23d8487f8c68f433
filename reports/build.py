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
    figs = all_figures(run, run_dir / runfolder.REPORT)
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
                   for f in (v.get("drill") or {}).get("faults", [])], **figs.extra,
        "drill": (v.get("drill") or {}).get("name"),
        "zombie_results_rejected": (v.get("drill") or {}).get("zombie_results_rejected"),
        "throughput_jobs_s": (v.get("figures") or {}).get("throughput_jobs_s"),
        "figures": [{"file": f.path.name, "title": f.title, "series": f.series}
                    for f in figs.shown],
        "figures_left_out": figs.left_out,
    }
    return data, [f.path for f in figs.shown]


def headline(data: dict[str, Any]) -> list[str]:
    """What a reader wants first: the verdict and its breaches, the rate and the tail, the
    two promises, and each fault with the load it fell on and how fast the system
    recovered."""
    checks = {c["name"]: c["violations"] for c in data["invariants"]}
    verdict = "PASSED" if data["passed"] else "FAILED: " + ", ".join(data["breaches"])
    drill = f", drill `{data['drill']}`" if data.get("drill") else ""
    lines = [f"**{verdict}** (scenario `{data['scenario']}`, {data['model']} model{drill})",
             f"{data['jobs']['total']} jobs at {_fmt(data.get('throughput_jobs_s'))} jobs/s, "
             f"end-to-end p99 {_fmt(data['end_to_end_ms'].get('p99'))} ms; lost "
             f"{checks.get('lost_jobs', '-')}, completed twice "
             f"{checks.get('completed_twice', '-')}"
             + (f", zombie results rejected {data['zombie_results_rejected']}"
                if data.get("zombie_results_rejected") is not None else "")]
    for f in data["faults"]:
        what = f["name"] + (f" {f['target']}" if f.get("target") else "")
        when = f"{f['start_s']:.1f}-{f['end_s']:.1f} s" if f["end_s"] > f["start_s"] \
            else f"at {f['start_s']:.1f} s"
        rec = f.get("recovery_s")
        after = "the heal" if f["end_s"] > f["start_s"] else "it"
        lines.append(f"{what} {when}: {f.get('creates_during', '-')} creates in it, "
                     + ("not recovered within the run" if rec is None
                        else f"recovered {rec:.1f} s after {after}"))
    return lines


def fault_target(fault: dict[str, Any]) -> str:
    """What a fault hit, as the report names it: a store (and how), or a process."""
    args = fault.get("args") or {}
    target = str(args.get("target") or args.get("process") or "")
    if args.get("clients"):  # some client groups only
        target += " of " + ", ".join(map(str, args["clients"]))
    how = args.get("mode")
    if args.get("fraction") is not None:
        target = f"{float(args['fraction']):.0%} of the workers"
    elif args.get("count") is not None:
        target = f"{args['count']} worker{'s' if args['count'] != 1 else ''}"
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


def markdown(data: dict[str, Any], *, with_headline: bool = True) -> str:
    top = [*(f"{h}  " for h in headline(data)), ""] if with_headline else []
    lines = [f"# {data['run_id']}", "", *top,
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
    yes = [{**r, "ok": "yes" if r["ok"] else "NO"} for r in data["slos"]]
    lines += ["", "## SLOs", "", *_table(yes, ["name", "value", "limit", "ok"])]
    held = [{**c, "ok": "yes" if c["ok"] else "NO",
             "detail": "; ".join(str(e) for e in c.get("examples", [])[:3])}
            for c in data["invariants"]]
    lines += ["", "## Invariants and drill checks", "",
              *_table(held, ["name", "violations", "ok", "detail"])]
    if data["faults"]:
        short = [{"fault": f["name"], "target": f.get("target"), "from s": f["start_s"],
                  "to s": f["end_s"], "creates in it": f.get("creates_during"),
                  "failed": f.get("creates_failed_during"),
                  "jobs/s before": f.get("throughput_before_jobs_s"),
                  "jobs/s during": f.get("throughput_during_jobs_s"),
                  "recovery s": f.get("recovery_s")} for f in data["faults"]]
        lines += ["", "## Faults", "", "Recovery: seconds from the heal (or the instant of a "
                  "kill) until throughput is back to 90 % of its level before the fault, or "
                  "nothing is left to run.", "", *_table(short, list(short[0]))]
    if data.get("jain_fairness_index") is not None:
        lines += ["", f"Work per worker: Jain's fairness index "
                      f"{data['jain_fairness_index']:.3f}"]
    if data["figures_left_out"]:
        lines += ["", "Not drawn: " + "; ".join(data["figures_left_out"]) + "."]
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


def html_report(data: dict[str, Any], figures: list[Path]) -> str:
    """One self-contained page: the headline in a banner (green or red), then the tables,
    then the figures (embedded), and what was not drawn and why."""
    imgs = "\n".join(
        f'<figure><img alt="{html.escape(p.stem)}" src="data:image/png;base64,'
        f'{base64.b64encode(p.read_bytes()).decode()}"/></figure>' for p in figures)
    state = "pass" if data["passed"] else "fail"
    banner = f'<div class="headline {state}">' + "".join(
        f"<p>{_inline(line)}</p>" for line in headline(data)) + "</div>"
    body = md_to_html(markdown(data, with_headline=False)).replace("</h1>", "</h1>" + banner, 1)
    style = ("body{font-family:sans-serif;max-width:1000px;margin:auto;padding:0 1em}"
             "table{border-collapse:collapse;margin:.5em 0;font-size:90%}"
             "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}"
             "td:first-child,th:first-child{text-align:left}th{background:#f0f0f0}"
             ".headline{padding:.4em 1em;border-radius:4px;margin:1em 0}"
             ".headline p{margin:.3em 0}.pass{background:#e6f4e6;border-left:6px solid #2a2}"
             ".fail{background:#fbe9e9;border-left:6px solid #c22}"
             "img{max-width:100%}figure{margin:1em 0}")
    return (f"<!doctype html><html><head><meta charset='utf-8'>"
            f"<title>{html.escape(str(data['run_id']))}</title><style>{style}</style></head>"
            f"<body>{body}<h2>Figures</h2>{imgs}</body></html>")


def build_report(run_dir: Path) -> dict[str, Any]:
    data, figures = summary(run_dir)
    out = run_dir / runfolder.REPORT
    md = markdown(data)
    (out / "summary.json").write_text(json.dumps(data, indent=2, default=str))
    (out / "summary.md").write_text(md)
    (out / "report.html").write_text(html_report(data, figures))
    return {runfolder.REPORT: str(out / "report.html"), "summary": str(out / "summary.md"),
            "figures": [str(p) for p in figures]}
