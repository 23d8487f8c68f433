"""A worker's wall clock, offset for clock-skew drills (a host whose clock runs ahead or
behind). Invariant 6 says job lifecycle timestamps, leases and liveness rest on PostgreSQL's
clock (and Redis's `TIME` inside the dispatch scripts) and client latencies on monotonic
clocks, so a worker's wall clock should change nothing; a skewed worker is how a drill proves
it.

`install_skew(offset_s)` shifts what the process reads as the time of day: `time.time`,
`time.time_ns`, and `datetime.datetime.now` / `utcnow` / `today` for code that looks
`datetime.datetime` up after the skew is installed. Monotonic clocks (and so every timeout,
sleep and the event loop's timers) are left alone: a skewed host still measures intervals
right. The worker reads the offset from `JOBHARNESS_CLOCK_SKEW_S` as it starts.
"""

from __future__ import annotations

import datetime as _dt
import math
import time
from collections.abc import Mapping

SKEW_ENV = "JOBHARNESS_CLOCK_SKEW_S"
MAX_SKEW_S = 7 * 86_400.0  # a week either way: further is a misconfiguration, not skew

_real_time = time.time
_real_time_ns = time.time_ns
_real_datetime = _dt.datetime
_installed = 0.0


def skew_from_env(env: Mapping[str, str]) -> float:
    """The offset `env` asks for, 0 when none (ValueError naming the variable when bad)."""
    raw = env.get(SKEW_ENV, "").strip()
    if not raw:
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{SKEW_ENV} must be a number of seconds, got {raw!r}") from None
    check_skew(value, SKEW_ENV)
    return value


def check_skew(value: float, name: str) -> None:
    if not math.isfinite(value) or abs(value) > MAX_SKEW_S:
        raise ValueError(f"{name} must be within +-{MAX_SKEW_S:.0f} s, got {value!r}")


def install_skew(offset_s: float) -> None:
    """From now on this process reads the time of day `offset_s` seconds off (0 restores it)."""
    global _installed
    check_skew(offset_s, "offset_s")
    _installed = float(offset_s)
    if offset_s == 0:
        time.time, time.time_ns = _real_time, _real_time_ns
        _dt.datetime = _real_datetime  # type: ignore[misc]
        return
    offset_ns = round(offset_s * 1e9)
    time.time = lambda: _real_time() + offset_s
    time.time_ns = lambda: _real_time_ns() + offset_ns
    _dt.datetime = _SkewedDatetime  # type: ignore[misc]


def current_skew() -> float:
    return _installed


class _SkewedDatetime(_real_datetime):
    @classmethod
    def now(cls, tz: _dt.tzinfo | None = None) -> _SkewedDatetime:
        return super().now(tz) + _dt.timedelta(seconds=_installed)

    @classmethod
    def utcnow(cls) -> _SkewedDatetime:
        return super().now(_dt.UTC).replace(tzinfo=None) + _dt.timedelta(seconds=_installed)

    @classmethod
    def today(cls) -> _SkewedDatetime:
        return cls.now()
