"""State memory: namespaced key/value entries with a TTL each, versioned writes, and the
events that carry writes from workers and API processes to the one memory owner.

Pure: the standard library only. The conflict rule:
- every applied write gives the entry a new, strictly greater version;
- a write with `expected_version` is a compare-and-set: it applies only if the stored version
  equals it (0 = the key must not exist); otherwise the writer gets `VersionConflict`
  carrying the winner's entry;
- a blind write (no `expected_version`, what write-behind events do) wins by order of
  application; the owner applies events in stream order, so the last event written to the
  stream wins.
Expired entries are never returned, whatever the backend still holds.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from core.errors import InvalidInput, JobHarnessError

JOB_NS = "job-management"
WORKER_NS = "worker-coordination"
NAMESPACES = (JOB_NS, WORKER_NS)
HOUR = 3600.0


class Clock(Protocol):
    def now(self) -> float: ...


class WallClock:
    def now(self) -> float:
        return time.time()


@dataclass
class FakeClock:
    """A clock tests move by hand (TTL expiry without sleeping)."""

    t: float = 1_800_000_000.0

    def now(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@dataclass(frozen=True, kw_only=True)
class Entry:
    namespace: str
    key: str
    value: dict[str, Any]
    version: int
    written_at: float
    expires_at: float
    group: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class VersionConflict(JobHarnessError):
    """A compare-and-set write lost: the stored version is not the expected one."""

    def __init__(self, namespace: str, key: str, expected: int, current: Entry | None) -> None:
        found = current.version if current else 0
        super().__init__(f"{namespace}/{key}: expected version {expected}, found {found}",
                         namespace=namespace, key=key, expected=expected, current=current)


class MemoryUnavailable(JobHarnessError):
    """The state memory backend cannot be reached."""


def check_namespace(namespace: str) -> str:
    if namespace not in NAMESPACES:
        raise InvalidInput("namespace", f"must be one of {', '.join(NAMESPACES)}")
    return namespace


def check_key(key: str) -> str:
    if not isinstance(key, str) or not 0 < len(key) <= 500:
        raise InvalidInput("key", "must be a string of 1 to 500 characters")
    return key


def check_put(namespace: str, key: str, ttl_s: float) -> None:
    """What every backend refuses before writing."""
    check_namespace(namespace)
    check_key(key)
    if not ttl_s > 0:
        raise InvalidInput("ttl_s", "must be > 0")


def group_of(key: str) -> str:
    """Entries of one job or worker share a group: 'job:ID:state' -> 'job:ID'."""
    parts = key.split(":")
    return ":".join(parts[:2]) if len(parts) >= 2 else key


class StateMemory(Protocol):
    """The state-memory port; `QdrantStateMemory` and `InMemoryStateMemory` implement it."""

    async def put(self, namespace: str, key: str, value: dict[str, Any], *, ttl_s: float,
                  expected_version: int | None = None) -> Entry: ...

    async def put_many(self, items: Sequence[tuple[str, str, dict[str, Any], float]]
                       ) -> int: ...

    async def get(self, namespace: str, key: str) -> Entry | None: ...

    async def delete(self, namespace: str, key: str) -> bool: ...

    async def delete_many(self, items: Sequence[tuple[str, str]]) -> int: ...

    async def list(self, namespace: str, *, group: str | None = None, limit: int = 100
                   ) -> list[Entry]: ...

    async def purge_expired(self) -> int: ...

    async def count(self, namespace: str) -> int: ...

    async def wipe(self) -> None: ...

    async def close(self) -> None: ...


class InMemoryStateMemory:
    """A dict-backed StateMemory for unit tests; same rules as the Qdrant adapter."""

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock = clock or WallClock()
        self._data: dict[tuple[str, str], Entry] = {}
        self._versions = VersionClock()

    def _live(self, ns: str, key: str) -> Entry | None:
        entry = self._data.get((ns, key))
        return entry if entry and entry.expires_at > self.clock.now() else None

    async def put(self, namespace: str, key: str, value: dict[str, Any], *, ttl_s: float,
                  expected_version: int | None = None) -> Entry:
        check_put(namespace, key, ttl_s)
        current = self._live(namespace, key)
        if expected_version is not None and (current.version if current else 0) != \
                expected_version:
            raise VersionConflict(namespace, key, expected_version, current)
        now = self.clock.now()
        entry = Entry(namespace=namespace, key=key, value=value,
                      version=self._versions.next(), written_at=now,
                      expires_at=now + ttl_s, group=group_of(key))
        self._data[(namespace, key)] = entry
        return entry

    async def put_many(self, items: Sequence[tuple[str, str, dict[str, Any], float]]) -> int:
        for ns, key, value, ttl in items:
            await self.put(ns, key, value, ttl_s=ttl)
        return len(items)

    async def get(self, namespace: str, key: str) -> Entry | None:
        return self._live(check_namespace(namespace), check_key(key))

    async def delete(self, namespace: str, key: str) -> bool:
        return self._data.pop((check_namespace(namespace), key), None) is not None

    async def delete_many(self, items: Sequence[tuple[str, str]]) -> int:
        return sum([await self.delete(ns, key) for ns, key in items])

    async def list(self, namespace: str, *, group: str | None = None, limit: int = 100
                   ) -> list[Entry]:
        check_namespace(namespace)
        now = self.clock.now()
        found = [e for (ns, _), e in sorted(self._data.items())
                 if ns == namespace and e.expires_at > now and (group is None or e.group == group)]
        return found[:limit]

    async def purge_expired(self) -> int:
        now = self.clock.now()
        dead = [k for k, e in self._data.items() if e.expires_at <= now]
        for k in dead:
            del self._data[k]
        return len(dead)

    async def count(self, namespace: str) -> int:
        return len(await self.list(namespace, limit=10**9))

    async def wipe(self) -> None:
        self._data.clear()

    async def close(self) -> None:
        return None


@dataclass(frozen=True, kw_only=True)
class StateEvent:
    """One write-behind operation: put (with a TTL) or delete."""

    op: str  # "put" | "delete"
    namespace: str
    key: str
    value: dict[str, Any] = field(default_factory=dict)
    ttl_s: float = 0.0

    def encode(self) -> str:
        return json.dumps([self.op, self.namespace, self.key, self.value, self.ttl_s],
                          separators=(",", ":"), default=str)

    @staticmethod
    def decode(raw: str) -> StateEvent:
        op, ns, key, value, ttl = json.loads(raw)
        return StateEvent(op=op, namespace=ns, key=key, value=value, ttl_s=ttl)


def encode_batch(events: Sequence[StateEvent]) -> str:
    return "[" + ",".join(e.encode() for e in events) + "]"


def decode_batch(raw: str) -> list[StateEvent]:
    return [StateEvent(op=op, namespace=ns, key=key, value=value, ttl_s=ttl)
            for op, ns, key, value, ttl in json.loads(raw)]


class VersionClock:
    """Entry versions: strictly increasing integers (microseconds of the writer's clock,
    bumped past the last one), so blind writes need no read to number themselves and a
    compare-and-set still names exactly one stored write."""

    def __init__(self) -> None:
        self._last = 0

    def next(self) -> int:
        self._last = max(self._last + 1, time.time_ns() // 1000)
        return self._last


def coalesce(events: Iterable[StateEvent]) -> list[StateEvent]:
    """Keep only the last event per key, in order of last appearance: a job's state written
    on create and deleted on completion in one batch costs one delete, not three writes."""
    last: dict[tuple[str, str], StateEvent] = {}
    for ev in events:
        last.pop((ev.namespace, ev.key), None)
        last[(ev.namespace, ev.key)] = ev
    return list(last.values())
