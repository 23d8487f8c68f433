"""What a drill's verdict looks like in a terminal: the checks (one row each), the faults with
the load they fell on and how fast the system recovered, and every steady-state probe that
did not hold with what it found, what it expected and why. Rich renderables, no reprs."""

from __future__ import annotations

from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text


def _num(v: Any, unit: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}{unit}"
    return f"{v}{unit}"


def fault_label(fault: dict[str, Any]) -> str:
    """`partition redis (hard)`, `kill_workers 30%`: what a fault was and what it hit."""
    args = fault.get("args") or {}
    target = args.get("target") or args.get("process")
    how = args.get("mode")
    label = fault["name"] + (f" {target}" if target else "")
    if "fraction" in args and args["fraction"] is not None:
        label += f" {float(args['fraction']):.0%}"
    elif "count" in args and args["count"] is not None:
        label += f" {args['count']}"
    return label + (f" ({how})" if how else "")


def checks_table(slos: list[dict[str, Any]], checks: list[dict[str, Any]],
                 title: str | None = None) -> Table:
    table = Table("check", "found", "limit", "ok", "detail", title=title, title_justify="left")
    for row in slos:
        table.add_row(row["name"], _num(row["value"]), _num(row["limit"]),
                      "yes" if row["ok"] else "[red]NO[/red]", "SLO")
    for c in checks:
        detail = "; ".join(str(e) for e in c.get("examples", [])[:3]) if not c["ok"] else ""
        table.add_row(c["name"], str(c["violations"]), "0",
                      "yes" if c["ok"] else "[red]NO[/red]", Text(detail, overflow="fold"))
    return table


def faults_table(faults: list[dict[str, Any]]) -> Table:
    """Each fault: when, the load it fell on, throughput before/during, recovery."""
    table = Table("fault", "when (s)", "creates in it (failed)", "jobs/s before/during",
                  "recovered", title="faults (recovered: seconds from the heal until "
                  "throughput was back)", title_justify="left")
    for f in faults:
        window = f"{f['start_s']:.1f}-{f['end_s']:.1f}" if f["end_s"] > f["start_s"] \
            else f"at {f['start_s']:.1f}"
        load = "-" if "creates_during" not in f else (
            f"{f['creates_during']} ({f['creates_failed_during']})")
        rec = f.get("recovery_s")
        # a drill alone samples nothing, so it has no recovery to show (no key at all)
        recovered = "-" if "recovery_s" not in f else (
            "[red]not within the run[/red]" if rec is None else f"{rec:.1f} s")
        rates = f"{_num(f.get('throughput_before_jobs_s'))}/" \
            f"{_num(f.get('throughput_during_jobs_s'))}"
        table.add_row(fault_label(f), window, load, rates, recovered)
    return table


def probe_lines(name: str, results: list[dict[str, Any]]) -> list[Text]:
    return [Text(f"{name}: {r['probe']} found {r['found']}, expected {r['expected']}"
                 + (f" ({r['why']})" if r.get("why") else ""), style="red")
            for r in results if not r["ok"]]


def drill_summary(drill: dict[str, Any]) -> RenderableType:
    """The faults table, zombie results rejected, and any probe that did not hold."""
    parts: list[RenderableType] = []
    if drill.get("faults"):
        parts.append(faults_table(drill["faults"]))
    zombies = drill.get("zombie_results_rejected")
    parts.append(Text(f"drill {drill.get('name')}: zombie results rejected "
                      f"{'-' if zombies is None else zombies}"))
    parts += probe_lines("steady state before", drill.get("steady_before", []))
    parts += probe_lines("steady state after", drill.get("steady_after", []))
    return Group(*parts)


def verdict_line(passed: bool, breaches: list[str]) -> str:
    return "[bold green]PASSED[/bold green]" if passed else \
        f"[bold red]FAILED[/bold red]: {', '.join(breaches)}"
