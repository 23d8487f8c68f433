"""Redis key names: the seed's contract, built in this one module and nowhere else."""

from __future__ import annotations

import re
from dataclasses import dataclass

_PREFIX_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


def priority_band(priority: int) -> str:
    """The seed's queue band of a priority: high (4-5), medium (2-3), low (1)."""
    if priority >= 4:
        return "high"
    if priority >= 2:
        return "medium"
    return "low"


@dataclass(frozen=True)
class Keys:
    """All keys under one prefix (default `gap006`)."""

    prefix: str = "gap006"

    def __post_init__(self) -> None:
        if not _PREFIX_RE.match(self.prefix):
            raise ValueError(f"invalid Redis key prefix {self.prefix!r}")

    @property
    def high(self) -> str:
        return f"{self.prefix}:high-priority-queue"

    @property
    def medium(self) -> str:
        return f"{self.prefix}:medium-priority-queue"

    @property
    def low(self) -> str:
        return f"{self.prefix}:low-priority-queue"

    @property
    def priority_queues(self) -> tuple[str, str, str]:
        """The three priority queues, best first."""
        return (self.high, self.medium, self.low)

    def queue_for(self, priority: int) -> str:
        return {"high": self.high, "medium": self.medium, "low": self.low}[
            priority_band(priority)
        ]

    @property
    def processing(self) -> str:
        return f"{self.prefix}:processing-queue"

    @property
    def dead_letter(self) -> str:
        return f"{self.prefix}:dead-letter-queue"

    @property
    def delayed(self) -> str:
        """Jobs waiting for their `run_at` or retry backoff, scored by due time (ms)."""
        return f"{self.prefix}:delayed-queue"

    @property
    def job_meta(self) -> str:
        """Hash job_id -> "priority|flow" (flow: job type, tenant and capability), read by
        the dispatch scripts."""
        return f"{self.prefix}:job-meta"

    @property
    def wakeup(self) -> str:
        """List of wake-up tokens: one per enqueued job, popped by idle workers."""
        return f"{self.prefix}:wakeup"

    @property
    def sched(self) -> str:
        """Base of the scheduling keys (flows, limits, running counts, fair-share passes):
        see core/dispatch/lua/sched.lua for the keys under it."""
        return f"{self.prefix}:sched"

    def sched_hash(self, name: str) -> str:
        """One of the scheduling keys: the hashes limits, running, held, buckets, waits, and
        limits_version (the table version the limits mirror holds)."""
        if name not in ("limits", "running", "held", "buckets", "waits", "limits_version"):
            raise ValueError(f"no scheduling hash {name!r}")
        return f"{self.sched}:{name}"

    @property
    def counters(self) -> str:
        """Hash of cluster-wide event counters (e.g. stale results rejected)."""
        return f"{self.prefix}:counters"

    @property
    def state_events(self) -> str:
        """Stream of state-memory writes, consumed by the one memory owner."""
        return f"{self.prefix}:state-events"

    @property
    def memory_owner(self) -> str:
        """Hash the memory owner publishes its status to (expires if it stops)."""
        return f"{self.prefix}:memory-owner"

    def heartbeat(self, worker_id: str) -> str:
        return f"{self.prefix}:worker:{worker_id}:heartbeat"

    @property
    def queues(self) -> dict[str, str]:
        """Every sorted set of the index by its short name (what `depths` reports)."""
        return {"high": self.high, "medium": self.medium, "low": self.low,
                "delayed": self.delayed, "processing": self.processing,
                "dead_letter": self.dead_letter}

    @property
    def heartbeat_pattern(self) -> str:
        return f"{self.prefix}:worker:*:heartbeat"

    @property
    def all_pattern(self) -> str:
        return f"{self.prefix}:*"


def limit_field(scope: str, name: str) -> str:
    """The field of a type's or tenant's limits and counts in the scheduling hashes."""
    return f"{scope}\0{name}"
