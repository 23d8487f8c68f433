"""The row every system of compare.py reports, from what its round measured (imported by the
peer scripts in the peers' environment and by compare.py itself: no dependency of either)."""

from __future__ import annotations

from typing import Any


def result(system: str, jobs: int, *, drained: int, drain_s: float, enqueue_s: float,
           enqueue_latencies_s: list[float]) -> dict[str, Any]:
    took = sorted(enqueue_latencies_s)
    return {"system": system, "jobs": jobs, "drained": drained,
            "drain_jobs_s": drained / drain_s, "enqueue_per_s": jobs / enqueue_s,
            "enqueue_p99_ms": took[int(0.99 * (len(took) - 1))] * 1000}
