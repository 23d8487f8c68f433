"""The values the dispatch index takes and gives (core/dispatch/index.py), and how they are
packed for its scripts."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass


def flow_of(job_type: str | None, tenant: str | None, capability: str | None) -> str:
    """The flow a job waits in (see core/dispatch/lua/sched.lua): jobs of one flow are
    interchangeable for every scheduling decision."""
    return f"{job_type or ''}\0{tenant or ''}\0{capability or ''}"


@dataclass(frozen=True, kw_only=True)
class EnqueueItem:
    job_id: str
    priority: int
    capability: str | None
    delay_ms: int
    job_type: str | None = None
    tenant: str | None = None

    @property
    def flow(self) -> str:
        return flow_of(self.job_type, self.tenant, self.capability)


@dataclass(frozen=True, kw_only=True)
class AcquireResult:
    job_ids: list[str]  # best first; fewer than asked when no more may run now
    next_due_in_ms: int | None  # until the earliest delayed job is due, if any
    limited: frozenset[str] = frozenset()  # ids counted under a max_running limit

    @property
    def job_id(self) -> str | None:
        return self.job_ids[0] if self.job_ids else None

    @classmethod
    def from_reply(cls, reply: list[str]) -> AcquireResult:
        """acquire.lua's reply: ids joined by ",", ms until the next due job (-1: none), the
        limited ids joined by ","."""
        found, next_due, limited = reply
        due = int(next_due)
        return cls(job_ids=found.split(",") if found else [],
                   next_due_in_ms=due if due >= 0 else None,
                   limited=frozenset(limited.split(",")) if limited else frozenset())


@dataclass(frozen=True, kw_only=True)
class DispatchSnapshot:
    """What Redis holds, for the reconciler."""

    now_ms: int
    queued: set[str]
    delayed: set[str]
    processing: dict[str, int]  # job id -> lease deadline (Redis clock, ms)
    meta: set[str]


@dataclass(frozen=True, kw_only=True)
class Presence:
    """Where Redis holds some jobs, for the reconciler's bounded sweeps."""

    now_ms: int
    indexed: set[str]  # queued in a priority band or delayed
    processing: dict[str, int]  # job id -> lease deadline (Redis clock, ms)


@dataclass(frozen=True, kw_only=True)
class SchedState:
    """The scheduling state in Redis: per "scope\0name" field."""

    limits: dict[str, str]
    running: dict[str, int]
    waits: dict[str, int]
    buckets: dict[str, tuple[float, int]]  # tokens and Redis ms at the last start
    now_ms: int  # Redis' clock when read


def pack_counts(counts: Mapping[str, int] | None) -> str:
    """Counter increments as the scripts read them: "field=n,field=n" ("" for none)."""
    return ",".join(f"{k}={n}" for k, n in (counts or {}).items() if n > 0)


def pack_priorities(priorities: Iterable[int]) -> str:
    """Priorities packed one digit each, as the scripts read them."""
    ps = list(priorities)
    if not all(1 <= p <= 9 for p in ps):
        raise ValueError(f"priorities must be 1..9 for the dispatch scripts, got {ps}")
    return "".join(map(str, ps))


def flow_positions(flows: Iterable[str]) -> tuple[str, list[str]]:
    """Each flow's 1-based position among the distinct ones (joined), and those."""
    distinct: dict[str, int] = {}
    which = [str(distinct.setdefault(f, len(distinct) + 1)) for f in flows]
    return ",".join(which), list(distinct)
