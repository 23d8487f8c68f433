"""Storm protection for proactive replacement: a model gone wrong (a store slowdown that
makes every worker look sick, a model trained on other hardware) must not churn the fleet.

Three guards, all on top of the supervisor's shared replacement rate limit:

- a **budget**: at most `per_hour` proactive replacements in any sliding hour;
- a **breaker**: it opens when most of the recent firings that could be judged were false,
  and closes again when the judged firings are mostly true;
- a **fleet-wide hold**: no proactive replacement in a round in which many workers score
  `failing` together (at least `fleet_min`, and at least `fleet_share` of the fleet). Workers
  fail one by one; a fleet that all looks sick at once has a sick host or store (a busy
  machine lags every event loop), which replacing workers cannot cure. Its firings are
  watched and judged like the others.

How a firing is judged. A flagged worker that was *not* replaced (held out by the policy, or
deferred by the budget or the breaker) is watched for `horizon_s`: if it fails in that time
(replaced reactively, or its process dies) the firing was true, otherwise false. A worker that
*was* replaced drains; a drain that dies or overruns proves the firing true, while a clean
drain proves nothing either way (the worker never got the chance to fail) and is not judged.
So while the breaker is open, the firings it holds back are still judged, and real failures
close it again; with no hold-out and the breaker closed only the budget guards.

Pure bookkeeping on a monotonic clock (passed in, so tests drive it).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class StormLimits:
    per_hour: int = 20  # proactive replacements in any sliding hour
    window: int = 6  # the last judged firings the breaker looks at
    min_false: int = 4  # it opens with at least this many false among them (and a majority)
    horizon_s: float = 120.0  # a flagged worker still alive after this was a false alarm
    fleet_min: int = 8  # a round with this many workers scoring failing, and
    fleet_share: float = 0.05  # this share of the fleet, holds proactive replacements

    def __post_init__(self) -> None:
        if not 1 <= self.per_hour <= 100_000:
            raise ValueError("--proactive-per-hour (the proactive budget) must be 1..100000, "
                             f"got {self.per_hour}")
        if not 1 <= self.min_false <= self.window <= 1000:
            raise ValueError("the breaker needs 1 <= min_false <= window <= 1000, got "
                             f"min_false={self.min_false}, window={self.window}")
        if not self.horizon_s > 0:
            raise ValueError("--breaker-horizon-s must be positive, got "
                             f"{self.horizon_s}")
        if self.fleet_min < 2 or not 0 < self.fleet_share <= 1:
            raise ValueError("the fleet-wide hold needs fleet_min >= 2 and 0 < fleet_share "
                             f"<= 1, got fleet_min={self.fleet_min}, "
                             f"fleet_share={self.fleet_share}")


class StormGuard:
    HOUR_S = 3600.0

    def __init__(self, limits: StormLimits) -> None:
        self.limits = limits
        self._fired: deque[float] = deque()  # times of proactive replacements, last hour
        self._watching: dict[str, float] = {}  # flagged, not replaced: worker -> deadline
        self._judged: deque[bool] = deque(maxlen=limits.window)  # True: the firing was right
        self.open = False
        self.judged_true = 0
        self.judged_false = 0
        self.trips = 0  # times the breaker opened

    def check(self, now: float) -> str | None:
        """None when a proactive replacement may go ahead now, else what holds it back
        ("breaker" or "budget")."""
        self._expire(now)
        if self.open:
            return "breaker"
        while self._fired and now - self._fired[0] >= self.HOUR_S:
            self._fired.popleft()
        if len(self._fired) >= self.limits.per_hour:
            return "budget"
        return None

    def fleetwide(self, failing: int, fleet: int) -> bool:
        """Whether `failing` workers of `fleet` scoring failing in one round hold proactive
        replacement back this round."""
        return failing >= max(self.limits.fleet_min, self.limits.fleet_share * fleet)

    def replaced(self, now: float) -> None:
        """A proactive replacement went ahead: it spends the budget."""
        self._fired.append(now)

    def watch(self, worker_id: str, now: float) -> None:
        """A flagged worker stays (held out or held back): judge the flag by what it does."""
        self._watching.setdefault(worker_id, now + self.limits.horizon_s)

    def failed(self, worker_id: str) -> None:
        """A worker failed (replaced reactively): if its flag was being watched, it was
        right."""
        if self._watching.pop(worker_id, None) is not None:
            self._judge(True)

    def drain_failed(self) -> None:
        """A proactively replaced worker died or overran its drain: that firing was right."""
        self._judge(True)

    def _expire(self, now: float) -> None:
        for wid, deadline in list(self._watching.items()):
            if now >= deadline:
                del self._watching[wid]
                self._judge(False)

    def _judge(self, right: bool) -> None:
        self._judged.append(right)
        if right:
            self.judged_true += 1
        else:
            self.judged_false += 1
        false = sum(1 for r in self._judged if not r)
        should_open = false >= self.limits.min_false and false * 2 > len(self._judged)
        if should_open and not self.open:
            self.trips += 1
        self.open = should_open

    def counters(self) -> dict[str, int]:
        """Its counts, named as the supervisor's counters."""
        return {"proactive_breaker_trips": self.trips, "proactive_judged_right": self.judged_true,
                "proactive_judged_false": self.judged_false}

    @property
    def spent(self) -> int:
        """Proactive replacements in the last hour (as of the last check)."""
        return len(self._fired)
