"""Whether the supervisor has been watching long enough to call a heartbeat stale.

A heartbeat's age says as much about the watcher as about the worker. When the supervisor
itself stops watching for longer than a heartbeat TTL (its process suspended, starved of CPU,
or its store reads answering that late), every worker's heartbeat looks stale when it looks
again, though the workers may have beaten all along or, stalled by the same cause (a host
frozen for a while), are about to beat again. So after such a gap it judges nobody for one TTL,
in which every live worker beats again; a dead one is replaced one TTL later than it would
have been. Exits of worker processes are judged as always: they are facts, not ages.
"""

from __future__ import annotations

from collections import Counter


class Vigil:
    def __init__(self, ttl_s: float, stats: Counter[str] | None = None) -> None:
        self.ttl_s = ttl_s
        self.stats: Counter[str] = Counter() if stats is None else stats  # "watch_gaps"
        self._last: float | None = None  # when the previous look ended
        self._blind_until = float("-inf")

    def look(self, started: float, ended: float) -> bool:
        """One look at the heartbeats, its reads begun at `started` and answered at `ended`
        (monotonic seconds): True if ages may be judged now."""
        previous, self._last = self._last, ended
        if (previous is not None and started - previous > self.ttl_s) \
                or ended - started > self.ttl_s:
            self.stats["watch_gaps"] += 1
            self._blind_until = ended + self.ttl_s
        return ended >= self._blind_until


__all__ = ["Vigil"]
