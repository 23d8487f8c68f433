"""Crash-loop backoff: a worker process that dies soon after it started (a store it cannot
reach at start, a bad handler module, a configuration it refuses) is restarted after a
growing pause, 1, 2, 4 ... up to 30 s, as a container platform does, instead of once a
second for as long as the cause lasts. A process that lived `QUICK_S` or longer resets its
slot's count: it died of something else."""

from __future__ import annotations

from dataclasses import dataclass

QUICK_S = 10.0
FIRST_S = 1.0
MAX_S = 30.0


@dataclass
class _Record:
    worker_id: str
    quick_deaths: int
    until: float


class CrashLoop:
    def __init__(self) -> None:
        self._slots: dict[int, _Record] = {}
        self.backoffs = 0  # restarts held back

    def hold(self, index: int, worker_id: str, spawned_at: float, now: float) -> bool:
        """True while the dead process `worker_id` of slot `index` must wait for its restart
        (call every round until it is restarted)."""
        rec = self._slots.get(index)
        if rec is None or rec.worker_id != worker_id:  # a death not seen before
            quick = now - spawned_at < QUICK_S
            n = (rec.quick_deaths if rec is not None else 0) + 1 if quick else 0
            wait = min(MAX_S, FIRST_S * 2 ** (n - 2)) if n >= 2 else 0.0
            rec = self._slots[index] = _Record(worker_id, n, now + wait)
            if wait:
                self.backoffs += 1
        return now < rec.until
