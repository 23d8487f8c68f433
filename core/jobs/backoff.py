"""Retry backoff: delay = min(base_s * 2**n + jitter, max_s), pure and seedable."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class BackoffPolicy:
    """Exponential backoff with additive jitter, capped at `max_s`."""

    base_s: float = 1.0
    factor: float = 2.0
    max_s: float = 300.0
    jitter_s: float = 0.25

    def __post_init__(self) -> None:
        if self.base_s < 0 or self.max_s < 0 or self.jitter_s < 0:
            raise ValueError("backoff durations must be >= 0")
        if self.factor < 1:
            raise ValueError("backoff factor must be >= 1")

    def delay_s(self, retry_count: int, rng: random.Random | None = None) -> float:
        """Delay before retry number `retry_count + 1` (retry_count = retries done so far)."""
        if retry_count < 0:
            raise ValueError("retry_count must be >= 0")
        jitter = (rng or random).uniform(0.0, self.jitter_s) if self.jitter_s else 0.0
        # Cap the exponent so huge retry counts cannot overflow the float.
        raw = self.base_s * self.factor ** min(retry_count, 64)
        return min(raw + jitter, self.max_s)
