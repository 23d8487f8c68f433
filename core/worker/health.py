"""Worker health metrics: what every heartbeat carries and what the predictor learns from.

RSS and CPU come from psutil; event-loop lag is how late a periodic timer fires; durations
and the error rate are over a rolling window of the worker's most recent jobs.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import asdict, dataclass

import psutil

from core.contract.figures import percentile

WINDOW = 200


@dataclass(frozen=True, kw_only=True)
class HealthSample:
    rss_bytes: int
    cpu_percent: float
    loop_lag_ms: float
    in_flight: int
    completed: int
    failed: int
    timed_out: int
    duration_p50_ms: float | None
    duration_p99_ms: float | None
    error_rate: float

    def as_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


class HealthMonitor:
    """Collects a worker's metrics; `sample()` is cheap enough to call every heartbeat."""

    def __init__(self, lag_interval_s: float = 0.25) -> None:
        self._proc = psutil.Process()
        self._proc.cpu_percent(None)  # prime: the first call always returns 0
        self._durations: deque[float] = deque(maxlen=WINDOW)
        self._outcomes: deque[bool] = deque(maxlen=WINDOW)
        self.completed = 0
        self.failed = 0
        self.timed_out = 0
        self.in_flight = 0
        self._lag_ms = 0.0
        self._lag_interval_s = lag_interval_s
        self.latest: HealthSample | None = None  # the last sample taken (heartbeats show it)

    def job_finished(self, duration_s: float, ok: bool, *, timed_out: bool = False) -> None:
        self._durations.append(duration_s * 1000)
        self._outcomes.append(ok)
        if ok:
            self.completed += 1
        else:
            self.failed += 1
            self.timed_out += timed_out

    async def watch_loop_lag(self, stop: asyncio.Event) -> None:
        """Measure how late a timer fires; keep the worst of the last interval window."""
        worst = 0.0
        last_reset = time.monotonic()
        while not stop.is_set():
            t0 = time.monotonic()
            await asyncio.sleep(self._lag_interval_s)
            lag = max(0.0, (time.monotonic() - t0 - self._lag_interval_s) * 1000)
            worst = max(worst, lag)
            if time.monotonic() - last_reset >= 5 * self._lag_interval_s:
                self._lag_ms, worst, last_reset = worst, 0.0, time.monotonic()

    def sample(self) -> HealthSample:
        """A new sample (CPU since the previous one); kept as `latest`."""
        durations = list(self._durations)
        outcomes = list(self._outcomes)
        self.latest = HealthSample(
            rss_bytes=self._proc.memory_info().rss,
            cpu_percent=self._proc.cpu_percent(None),
            loop_lag_ms=round(self._lag_ms, 3),
            in_flight=self.in_flight,
            completed=self.completed,
            failed=self.failed,
            timed_out=self.timed_out,
            duration_p50_ms=percentile(durations, 50),
            duration_p99_ms=percentile(durations, 99),
            error_rate=(outcomes.count(False) / len(outcomes)) if outcomes else 0.0,
        )
        return self.latest
