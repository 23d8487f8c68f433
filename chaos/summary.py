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
        if v.is_integer() and abs(v) < 1e12:
            return f"{int(v)}{unit}"
        return f"{v:.4g}{unit}"
    return f"{v}{unit}"


def fault_label(fault: dict[str, Any]) -> str:
    """`partition redis (hard)`, `partition redis@workers-a (hard)`, `kill_workers 30%`: what
    a fault was and what it hit (`@`: only those client groups)."""
    args = fault.get("args") or {}
    target = args.get("target") or args.get("process")
    how = args.get("mode")
    if isinstance(how, list):  # a degrade step drawing from several modes
        how = "/".join(map(str, how))
    label = fault["name"] + (f" {target}" if target else "")
    if args.get("clients"):
        label += "@" + ",".join(map(str, args["clients"]))
    if "fraction" in args and args["fraction"] is not None:
        label += f" {float(args['fraction']):.0%}"
    elif "count" in args and args["count"] is not None:
        label += f" {args['count']}"
    return label + (f" ({how})" if how else "")


def checks_table(slos: list[dict[str, Any]], checks: list[dict[str, Any]],
                 title: str | None = None) -> Table:
    """One row per check: SLOs (found against their limit), then invariants and the drill's
    checks (violations, limit 0)."""
    table = Table(title=title, title_justify="left")
    table.add_column("check", no_wrap=True)
    for name in ("kind", "found", "limit", "ok"):
        table.add_column(name, no_wrap=True)
    for row in slos:
        table.add_row(row["name"], "SLO", _num(row["value"]), _num(row["limit"]),
                      "yes" if row["ok"] else "[red]NO[/red]")
    for c in checks:
        table.add_row(c["name"], "check", str(c["violations"]), "0",
                      "yes" if c["ok"] else "[red]NO[/red]")
    return table


def failures(checks: list[dict[str, Any]]) -> list[Text]:
    """Each check that failed, with what it means and its first examples (job ids, probes),
    on lines of their own so nothing is cut."""
    out = []
    for c in checks:
        if c["ok"]:
            continue
        out.append(Text(f"{c['name']}: {c['violations']} — {c.get('description', '')}",
                        style="bold red"))
        out += [Text(f"  {e}") for e in c.get("examples", [])[:5]]
    return out


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


def drill_summary(drill: dict[str, Any]) -> RenderableType:
    """The faults table and the zombie results rejected (a probe that did not hold is named
by its failed check, steady_state_before or steady_state_after)."""
    parts: list[RenderableType] = []
    if drill.get("faults"):
        parts.append(faults_table(drill["faults"]))
    zombies = drill.get("zombie_results_rejected")
    parts.append(Text(f"drill {drill.get('name')}: zombie results rejected "
                      f"{'-' if zombies is None else zombies}"))
    return Group(*parts)


def verdict_line(passed: bool, breaches: list[str]) -> str:
    return "[bold green]PASSED[/bold green]" if passed else \
        f"[bold red]FAILED[/bold red]: {', '.join(breaches)}"
