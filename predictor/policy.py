"""When a verdict becomes an action: `failing` with probability at or above `threshold` for
`k` consecutive scores. The supervisor applies it live; evaluation replays it over held-out
rows to measure lead times and false replacements the way the supervisor would have acted."""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True, kw_only=True)
class Policy:
    threshold: float = 0.6
    k: int = 3
    holdout: float = 0.1  # share of workers scored but never acted on
    min_samples: int = 3  # a worker with fewer samples in its window is not judged yet

    def __post_init__(self) -> None:
        if not 0 < self.threshold <= 1:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")
        if not 1 <= self.k <= 100:
            raise ValueError(f"k must be 1..100, got {self.k}")
        if not 0 <= self.holdout < 1:
            raise ValueError(f"holdout must be in [0, 1), got {self.holdout}")

    def held_out(self, worker_id: str) -> bool:
        """Stable across processes and restarts: a hash of the worker id, not a draw."""
        return (zlib.crc32(worker_id.encode()) % 10_000) / 10_000 < self.holdout


class Streaks:
    """Consecutive `failing` verdicts per worker (live)."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.count: dict[str, int] = {}

    def update(self, worker_id: str, p_failing: float, samples: float) -> bool:
        """Record one score; True when the policy fires for this worker."""
        hit = p_failing >= self.policy.threshold and samples >= self.policy.min_samples
        n = self.count.get(worker_id, 0) + 1 if hit else 0
        self.count[worker_id] = n
        return n >= self.policy.k

    def forget(self, worker_id: str) -> None:
        self.count.pop(worker_id, None)


def first_firing(scored: pd.DataFrame, policy: Policy) -> pd.DataFrame:
    """Per worker (and run): the time the policy would first fire, NaN if never.
    `scored` needs run, worker_id, t, samples_in_window and p_failing, one row per score."""
    out = []
    for (run, wid), df in scored.sort_values("t").groupby(["run", "worker_id"], observed=True):
        streaks = Streaks(policy)  # the supervisor's own counting, replayed
        fired = next((float(t) for t, p, n in zip(df["t"], df["p_failing"],
                                                  df["samples_in_window"], strict=True)
                      if streaks.update(wid, float(p), float(n))), np.nan)
        out.append({"run": run, "worker_id": wid, "fired_at": fired})
    return pd.DataFrame(out, columns=["run", "worker_id", "fired_at"])
