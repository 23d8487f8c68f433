"""How the figures every part quotes are computed, so that a worker's health sample, a report and
a benchmark mean the same thing by "p99"."""

from __future__ import annotations

import math
from collections.abc import Sequence
from decimal import Decimal


def percentile(values: Sequence[float], pct: float) -> float | None:
    """Nearest-rank percentile (the smallest value with at least `pct` % of the values at or
    below it); None for no values. The rank is computed in decimal: in binary floating point
    99.9 / 100 * 1000 is 999.0000000000001, whose ceiling would make p99.9 the maximum."""
    if not values:
        return None
    if not 0 <= pct <= 100:
        raise ValueError(f"percentile must be between 0 and 100, got {pct!r}")
    ordered = sorted(values)
    n = len(ordered)
    rank = math.ceil(Decimal(str(pct)) * n / 100)
    return ordered[max(1, min(n, rank)) - 1]
