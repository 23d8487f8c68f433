"""The model card: what a model was trained on and how well it did, as Markdown (for people)
and JSON (for tools), written next to the model file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from predictor.soak import held_text

FEATURE_NOTES = {
    "age_s": "seconds since the worker's first sample",
    "since_last_s": "seconds since its last sample (a missed heartbeat shows here)",
    "hb_gap_max_s": "largest gap between samples in the window",
    "hb_gap_std_s": "heartbeat interval jitter (standard deviation of the gaps)",
    "samples_in_window": "samples in the last 20 s",
    "rss_mb": "resident memory",
    "rss_slope_mb_s": "resident memory trend (least squares over the window)",
    "rss_rel": "resident memory / fleet median",
    "cpu_mean": "CPU percent, window mean",
    "lag_max_ms": "worst event-loop lag in the window",
    "lag_slope_ms_s": "event-loop lag trend",
    "lag_rel": "worst event-loop lag / fleet median",
    "hb_gap_rel": "largest heartbeat gap / fleet median",
    "p99_ms": "job duration p99 (the worker's last 200 jobs)",
    "p99_slope_ms_s": "duration p99 trend",
    "p99_rel": "duration p99 / fleet median",
    "error_rate_w": "failed / finished jobs in the window",
    "timeout_rate_w": "timed-out / finished jobs in the window",
    "throughput_w": "jobs finished per second in the window",
    "throughput_rel": "throughput / fleet median",
    "in_flight": "jobs running now",
    "rss_slope_long_mb_s": "resident memory trend over 60 s",
    "rss_rise_long_mb": "resident memory now minus its lowest in 60 s",
    "lag_mean_ms": "mean event-loop lag in the window",
    "lag_max_long_ms": "worst event-loop lag in 60 s",
    "lag_slope_long_ms_s": "event-loop lag trend over 60 s",
    "lag_growth_ms": "worst lag in the window minus the worst in the 40 s before it",
    "gap_max_long_s": "largest gap between samples in 60 s",
    "gaps_long": "gaps of more than 1.5 usual intervals in 60 s (stalls)",
    "gap_growth_s": "largest gap in the window minus the largest in the 40 s before it",
    "cpu_rel": "CPU / fleet median",
}


def _pct(v: Any) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def card_markdown(meta: dict[str, Any]) -> str:
    if meta.get("kind") == "rule":
        return _rule_markdown(meta)
    lines = ["# Worker-health model", "",
             f"Trained {meta.get('trained_at', '?')} with `{meta.get('command', '?')}`.", "",
             *([f"Run folders made with `{meta['data_command']}`.", ""]
               if meta.get("data_command") else []),
             "Classes: `healthy`, `degraded`, `failing` (fails within "
             f"{meta['horizon_s']:.0f} s). Action policy: `failing` with probability >= "
             f"{meta['threshold']} for {meta['k']} consecutive scores.", "",
             "## Data", "",
             "| run | worker_health.csv (sha256, first 16) | workers.csv (sha256, first 16) |",
             "|---|---|---|"]
    lines += [f"| {s['run']} | `{s['worker_health.csv']}` | `{s['workers.csv']}` |"
              for s in meta.get("sources", [])]
    bal = meta["class_balance"]
    total = sum(bal.values()) or 1
    lines += ["", f"{meta['rows']} rows; class balance (trainable rows): " + ", ".join(
        f"{c} {n} ({100 * n / total:.1f} %)" for c, n in bal.items()), "",
        "## Features", "", "| feature | meaning |", "|---|---|"]
    lines += [f"| `{f}` | {FEATURE_NOTES.get(f, '')} |" for f in meta["features"]]
    for title, key in (("Validation (time-ordered folds, grouped by run)", "validation"),
                       ("Held-out evaluation", "evaluation")):
        res = meta.get(key)
        lines += ["", f"## {title}", ""]
        if not res:
            lines.append("Not available (needs at least three runs)." if key == "validation"
                         else "Not run.")
            continue
        lines += _result_lines(res)
    lines += _unseen_lines(meta.get("unseen"))
    lines += _baseline_lines(meta.get("baselines"))
    lines += _frozen_test_lines(meta.get("frozen_test"))
    lines += _soak_lines(meta.get("soak"))
    lines += ["", "## Library versions", ""] + [f"- {k} {v}" for k, v in
                                               meta["versions"].items()]
    return "\n".join(lines) + "\n"


def _rule_markdown(meta: dict[str, Any]) -> str:
    """The hand rule's card: the rule, and the evidence recorded for it (held-out and unseen
    evaluations, soak); it is not trained, so it has no data, features or validation."""
    lines = ["# Worker-health policy: the hand rule", "",
             f"Not trained: a rule written once without tuning (predictor/baselines.py): "
             f"{meta['rule']}. Action policy: fire when it has held for {meta['k']} "
             "consecutive scores (health samples every second).", "",
             "Inputs: " + ", ".join(f"`{f}` ({FEATURE_NOTES.get(f, '')})"
                                    for f in meta["features"]) + "."]
    lines += ["", "## Held-out evaluation", ""]
    lines += _result_lines(meta["evaluation"]) if meta.get("evaluation") else ["Not run."]
    lines += _unseen_lines(meta.get("unseen"))
    lines += _soak_lines(meta.get("soak"))
    return "\n".join(lines) + "\n"


def _result_lines(res: dict[str, Any]) -> list[str]:
    out = [f"`{res['command']}`", ""] if res.get("command") else []
    if "folds" in res:
        out += [f"- fold: train {', '.join(f['train'])} -> test {f['test']}"
                for f in res["folds"]] + [""]
    if "runs" in res:
        out += [f"Runs: {', '.join(res['runs'])}", ""]
    out += ["| class | precision | recall | F1 | rows |", "|---|---|---|---|---|"]
    for cls, m in res["rows"]["per_class"].items():
        out.append(f"| {cls} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} | "
                   f"{m['support']} |")
    ev = res["events"]
    g, a = ev["gradual"], ev["abrupt"]
    lead = g.get("lead_s") or {}
    out += ["", f"- PR-AUC (`failing`, rows): {_pct(res['rows']['pr_auc_failing'])}",
            f"- gradual failures caught before they happened: {g['caught']} of "
            f"{g['failures']} (recall {_pct(g['recall'])})",
            f"- firings followed by that worker's failure: precision {_pct(ev['precision'])}"
            f" of {ev['firings']} ({ev.get('early_firings', 0)} more than the horizon ahead)",
            "- lead time (s): " + (", ".join(f"{k} {v}" for k, v in lead.items())
                                   if lead else "n/a"),
            f"- false replacements: {ev['false_replacements']} in "
            f"{ev['healthy_worker_hours']} worker-hours "
            f"({ev['false_per_100_worker_hours']} per 100 worker-hours, 95 % upper bound "
            f"{ev.get('false_per_100_upper95', 'n/a')})",
            f"- abrupt failures (not predictable, scored apart): {a['caught']} of "
            f"{a['failures']} caught"]
    return out


def _ci(v: Any, ci: Any) -> str:
    return "n/a" if v is None else f"{v:.3f} [{ci[0]:.2f}, {ci[1]:.2f}]"


def _event_cells(ev: dict[str, Any], f1: float) -> str:
    """A scorer's event columns: gradual caught, firing precision, median lead, false
    replacements per 100 worker-hours, event F1 (the row's end)."""
    g = ev["gradual"]
    lead = (g.get("lead_s") or {}).get("p50")
    return (f"{g['caught']} of {g['failures']} | {_pct(ev['precision'])} | "
            f"{lead if lead is not None else 'n/a'} | {ev['false_per_100_worker_hours']} | "
            f"{f1:.3f} |")


def _row_cells(at: dict[str, Any] | None) -> str:
    """Row precision and recall of `failing` at the action threshold ("n/a | n/a" for a card
    written before they were recorded)."""
    if not at:
        return "n/a | n/a"
    return f"{_ci(at['precision'], at['precision_ci'])} | {_ci(at['recall'], at['recall_ci'])}"


def _baseline_lines(b: dict[str, Any] | None) -> list[str]:
    out = ["", "## Against the baselines", ""]
    if not b:
        return [*out, "Not available (needs at least three runs: a threshold is chosen on "
                      "the folds before each one it is scored on)."]
    out += [f"On the validation folds {', '.join(b['runs'])} ({b['rows']} rows), the same rows "
            "for each; the model's and the logistic regression's thresholds chosen on the "
            "earlier folds only. Row precision and recall of `failing` at the action "
            "threshold with 95 % Wilson intervals; events as the supervisor would have acted.",
            "", "| scorer | PR-AUC | row precision | row recall | gradual caught | "
            "firing precision | median lead (s) | false per 100 worker-hours | event F1 |",
            "|---|---|---|---|---|---|---|---|---|"]
    for name, sc in b["scorers"].items():
        at = sc["at_threshold"]
        out.append(f"| {name.replace('_', ' ')} | {_pct(sc['pr_auc_failing'])} | "
                   f"{_ci(at['precision'], at['precision_ci'])} | "
                   f"{_ci(at['recall'], at['recall_ci'])} | "
                   f"{_event_cells(sc['events'], b['event_f1'][name])}")
    rule = b["scorers"]["hand_rule"].get("rule", "")
    out += ["", f"Hand rule: {rule}.", "",
            "The model beats the hand rule here (event F1)." if b["model_beats_hand_rule"]
            else "**The model does not beat the hand rule here (event F1)**: prefer the rule, "
                 "or more varied training data."]
    return out


def _frozen_test_lines(ft: dict[str, Any] | None) -> list[str]:
    if not ft:
        return []
    out = ["", "## Frozen test set (scored once)", "",
           "| run | worker_health.csv (sha256, first 16) |", "|---|---|"]
    out += [f"| {s['run']} | `{s['worker_health.csv']}` |" for s in ft["sources"]]
    out += ["", "| scorer | row precision | row recall | gradual caught | firing precision | "
            "median lead (s) | false per 100 worker-hours | event F1 |",
            "|---|---|---|---|---|---|---|---|"]
    names = {"new": "this model", "current": f"current ({ft.get('current_model')})",
             "hand_rule": "hand rule"}
    for key, res in ft["scores"].items():
        out.append(f"| {names.get(key, key)} | {_row_cells(res.get('at_threshold'))} | "
                   f"{_event_cells(res['events'], res['event_f1'])}")
    out += ["", "Rows: `failing` at each scorer's action threshold, 95 % Wilson intervals."]
    out += ["", f"Ship it: {'yes' if ft['ship'] else 'no'} ({'; '.join(ft['reasons'])})."]
    return out


def _unseen_lines(res: dict[str, Any] | None) -> list[str]:
    """The unseen condition, the hand rule beside the model, and the issue's targets."""
    if not res:
        return []
    ev, g = res["events"], res["events"]["gradual"]
    lead = (g.get("lead_s") or {}).get("p50")
    hand = res.get("hand_rule") or {}
    at = res.get("at_threshold") or {}
    targets = {"gradual recall >= 0.8": (g.get("recall") or 0) >= 0.8,
               "firing precision >= 0.8": (ev.get("precision") or 0) >= 0.8,
               "median lead >= 10 s": lead is not None and lead >= 10}
    if at:
        targets.update({"row recall >= 0.8": (at.get("recall") or 0) >= 0.8,
                        "row precision >= 0.8": (at.get("precision") or 0) >= 0.8})
    out = ["", "## Unseen condition (a drill never trained on)", "", *_result_lines(res), ""]
    if at:
        out.append(f"- rows of `failing` at the action threshold: {_row_cells(at)} "
                   "(precision | recall, 95 % Wilson intervals; `failing` from a fatal "
                   "fault's onset, or within the horizon, to the failure)")
        if at.get("horizon"):
            out.append(f"- the same rows against the horizon-only label (fails within the "
                       f"horizon): {_row_cells(at['horizon'])}")
    if hand:
        out.append(f"- the hand rule on the same runs ({hand['rule']}): gradual caught "
                   f"{hand['events']['gradual']['caught']} of "
                   f"{hand['events']['gradual']['failures']}, firing precision "
                   f"{hand['events']['precision']}, event F1 {hand['event_f1']} against the "
                   f"model's {res.get('event_f1')}")
    out.append("- targets: " + "; ".join(f"{k}: {'met' if ok else 'not met'}"
                                         for k, ok in targets.items()))
    return out


def _soak_lines(soak: dict[str, Any] | None) -> list[str]:
    if not soak:
        return []
    out = ["", "## False alarms (no-fault soak)", "", f"`{soak['command']}`", "",
           "| run | workers | worker-hours | fired | replaced | held back | flagged (hold-out) "
           "| most failing in a round | failed anyway |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in soak["per_run"]:
        held = held_text(r) or "-"
        out.append(f"| {r['run']} | {r['workers']} | {r['worker_hours']} | {r['fired']} | "
                   f"{r.get('replaced', '-')} | {held} | {r['flagged_holdout']} | "
                   f"{r.get('worst_round_failing', '-')} | {r['failed_anyway']} |")
    if "false_replacements" in soak:
        out += ["", f"False replacements (replaced, or flagged in the hold-out arm): "
                f"{soak['false_replacements']} in {soak['worker_hours']} worker-hours, "
                f"{soak['replacements_per_100_worker_hours']} per 100 worker-hours, 95 % upper "
                f"bound {soak['replacements_per_100_upper95']} (target <= 1 per 100: "
                f"{'met' if soak['target_met'] else 'not met'}). The policy's own false "
                f"firings, before the storm guards: {soak['false_firings']}, "
                f"{soak['false_per_100_worker_hours']} per 100 (95 % upper bound "
                f"{soak['false_per_100_upper95']})."]
    else:  # a card written before replacements were counted apart
        out += ["", f"False firings: {soak['false_firings']} in {soak['worker_hours']} "
                f"worker-hours, {soak['false_per_100_worker_hours']} per 100 worker-hours, "
                f"95 % upper bound {soak['false_per_100_upper95']} (target <= 1 per 100: "
                f"{'met' if soak['target_met'] else 'not met'})."]
    return out


def write_card(meta: dict[str, Any], model_path: Path) -> tuple[Path, Path]:
    md = model_path.with_suffix(".md")
    js = model_path.with_suffix(".card.json")
    md.write_text(card_markdown(meta))
    js.write_text(json.dumps(meta, indent=2, default=str) + "\n")
    return md, js
