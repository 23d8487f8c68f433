"""Fault windows from a drill's journal, and how the system behaved in and after each: the
throughput before, during and after, and the recovery time (from the heal until throughput is
back to >= 90 % of its pre-fault level, or the backlog is empty). Pure: it reads the run's
per-second samples."""

from __future__ import annotations

from typing import Any

TERMINAL = ("COMPLETED", "DEAD", "CANCELLED")
BACKLOG = ("WAITING", "PENDING", "PROCESSING")


def fault_windows(journal: list[dict[str, Any]], offset_s: float) -> list[dict[str, Any]]:
    """(name, start_s, end_s) in run time; a fault without duration is an instant."""
    out = []
    for entry in journal:
        if entry["kind"] != "fault":
            continue
        start = offset_s + entry["t_s"]
        out.append({"name": entry["name"], "args": entry.get("args", {}),
                    "start_s": round(start, 2),
                    "end_s": round(start + float(entry.get("duration_s") or 0), 2)})
    return out


def _series(samples: list[dict[str, Any]]) -> list[tuple[float, float, int]]:
    """(time, jobs finished per second since the previous sample, backlog)."""
    out = []
    prev_t = prev_done = None
    for row in samples:
        t = float(row["elapsed_s"])
        done = sum(int(row[k]) for k in TERMINAL)
        backlog = sum(int(row[k]) for k in BACKLOG)
        if prev_t is not None and t > prev_t:
            out.append((t, (done - prev_done) / (t - prev_t), backlog))  # type: ignore[operator]
        prev_t, prev_done = t, done
    return out


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def recovery(samples: list[dict[str, Any]], windows: list[dict[str, Any]],
             level: float = 0.9) -> list[dict[str, Any]]:
    series = _series(samples)
    out = []
    for w in windows:
        before = _mean([r for t, r, _ in series if w["start_s"] - 10 <= t < w["start_s"]])
        during = _mean([r for t, r, _ in series if w["start_s"] <= t <= w["end_s"]])
        recovered_at = None
        for i, (t, _, backlog) in enumerate(series):
            if t < w["end_s"]:
                continue
            recent = [r for tt, r, _ in series[max(0, i - 2):i + 1] if tt >= w["end_s"]]
            back = before is not None and recent and _mean(recent) >= level * before  # type: ignore[operator]
            if backlog == 0 or back:
                recovered_at = t
                break
        out.append({**w, "throughput_before_jobs_s": _round(before),
                    "throughput_during_jobs_s": _round(during),
                    "recovery_s": _round(recovered_at - w["end_s"]
                                         if recovered_at is not None else None)})
    return out


def _round(v: float | None) -> float | None:
    return round(v, 2) if v is not None else None
