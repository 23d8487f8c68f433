"""The row every system of compare.py reports, from what its round measured, and the handshake
that opens and closes its CPU window around a peer's drain (imported by the peer scripts in the
peers' environment and by compare.py itself: no dependency of either)."""

from __future__ import annotations

import os
import sys
from typing import Any


def handshake(phase: str) -> None:
    """Tell compare.py that `phase` is reached and wait until it has taken its CPU snapshot
    (only when it asks for that: PEER_HANDSHAKE)."""
    if os.environ.get("PEER_HANDSHAKE"):
        print(phase, flush=True)
        sys.stdin.readline()


def result(system: str, jobs: int, *, drained: int, drain_s: float, enqueue_s: float,
           enqueue_latencies_s: list[float]) -> dict[str, Any]:
    took = sorted(enqueue_latencies_s)
    return {"system": system, "jobs": jobs, "drained": drained,
            "drain_jobs_s": drained / drain_s, "enqueue_per_s": jobs / enqueue_s,
            "enqueue_p99_ms": took[int(0.99 * (len(took) - 1))] * 1000}
