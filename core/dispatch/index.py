"""RedisDispatch: the dispatch index in Redis sorted sets (the seed's keys).

Redis may be lost, stale or unreachable at any time (invariant 1): every call either succeeds
or raises DispatchUnavailable quickly: after a failure the breaker (core/dispatch/breaker.py)
is open, calls fail at once, and a background ping every `retry_after_s` finds Redis back. New
jobs are indexed write-behind (`writer`, core/dispatch/behind.py): every other call waits for it.

Length: the only code that talks to the dispatch keys, a short method per script or command
group (enqueue, acquire, forget, limits, the reconciler's reads); values in records.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.resources
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import redis.asyncio as aioredis

from core.contract.keys import Keys
from core.dispatch.behind import IndexWriter
from core.dispatch.breaker import CONNECT_TIMEOUT_S, FAILURES, Breaker, describe, unavailable
from core.dispatch.records import (
    AcquireResult,
    DispatchSnapshot,
    EnqueueItem,
    Presence,
    SchedState,
    flow_positions,
    pack_counts,
    pack_priorities,
)
from core.errors import DispatchUnavailable

WAKEUP_CAP = 10_000
PROMOTE_LIMIT = 500


def _script(name: str) -> str:
    """A dispatch script with the shared scheduling functions in front of it."""
    lua = importlib.resources.files("core.dispatch").joinpath("lua")
    return lua.joinpath("sched.lua").read_text() + lua.joinpath(f"{name}.lua").read_text()


class RedisDispatch:
    """Dispatch index over one Redis connection pool (plus one blocking connection)."""

    def __init__(
        self,
        url: str,
        keys: Keys,
        *,
        timeout_s: float = 1.0,
        retry_after_s: float = 2.0,
        max_connections: int = 2,
        blocking_connections: int | None = None,
    ) -> None:
        self.keys = keys
        connect_s = max(timeout_s, CONNECT_TIMEOUT_S)
        # Blocking pools: callers beyond the budget wait for a connection instead of failing
        # (a "too many connections" error must not look like a Redis outage).
        self._client = aioredis.Redis(
            connection_pool=aioredis.BlockingConnectionPool.from_url(
                url,
                max_connections=max_connections,
                timeout=timeout_s * 5,
                socket_timeout=timeout_s,
                socket_connect_timeout=connect_s,
                decode_responses=True,
            ),
        )
        # Idle workers park on BLPOP here; one connection per concurrent waiter.
        self._blocking = aioredis.Redis(
            connection_pool=aioredis.BlockingConnectionPool.from_url(
                url,
                max_connections=blocking_connections or max_connections,
                timeout=None,
                socket_connect_timeout=connect_s,
                decode_responses=True,
            ),
        )
        self._acquire = self._client.register_script(_script("acquire"))
        self._forget = self._client.register_script(_script("forget"))
        self._reprioritize = self._client.register_script(_script("reprioritize"))
        self._enqueue = self._client.register_script(_script("enqueue"))
        self._sched_sync = self._client.register_script(_script("sched_sync"))
        self._limit = self._client.register_script(_script("limit"))
        self.breaker = Breaker(retry_after_s, self._client.ping)
        self.writer = IndexWriter(self.enqueue)
        self.failure_causes: Counter[str] = Counter()  # the breaker's openings, by cause
        self.observe: Callable[[float], None] | None = None  # seconds per call (metrics)

    @property
    def available(self) -> bool:
        """False while the breaker is open (a call failed, no probe has reached Redis since)."""
        return self.breaker.available

    async def _call(self, coro: Any) -> Any:
        if self.writer.busy:  # this process' earlier creates first
            await self.writer.flushed()
        if not self.available:
            coro.close()
            raise DispatchUnavailable("Redis marked unavailable after a recent failure")
        t0 = time.perf_counter()
        try:
            result = await coro
        except FAILURES as exc:
            if not unavailable(exc):
                raise
            cause = describe(exc)
            self.failure_causes[cause] += 1
            self.breaker.trip(cause)
            raise DispatchUnavailable(f"Redis call failed: {exc}") from exc
        if self.observe is not None:
            self.observe(time.perf_counter() - t0)
        return result

    def reset_breaker(self) -> None:
        self.breaker.reset()

    async def ping(self) -> bool:
        try:
            return bool(await self._call(self._client.ping()))
        except DispatchUnavailable:
            return False

    async def close(self) -> None:
        with contextlib.suppress(TimeoutError):  # the rest is the reconciler's
            await asyncio.wait_for(self.writer.flushed(), 5.0)
        await self.breaker.close()
        await self._client.aclose(close_connection_pool=True)
        await self._blocking.aclose(close_connection_pool=True)

    def _keys6(self, first: str, second: str, third: str) -> list[str]:
        return [first, second, third, self.keys.high, self.keys.medium, self.keys.low]

    async def enqueue(self, items: Sequence[EnqueueItem]) -> int:
        """Index jobs for dispatch; returns how many were due at once."""
        if not items:
            return 0
        total = 0
        for start in range(0, len(items), 1000):
            chunk = items[start : start + 1000]
            which, flows = flow_positions(it.flow for it in chunk)
            args: list[Any] = [
                WAKEUP_CAP,
                ",".join(it.job_id for it in chunk),
                pack_priorities(it.priority for it in chunk),
                ",".join(str(max(0, it.delay_ms)) for it in chunk),
                which,
                *flows,
            ]
            keys = [*self._keys6(self.keys.delayed, self.keys.job_meta, self.keys.wakeup),
                    self.keys.sched]
            total += int(await self._call(self._enqueue(keys=keys, args=args)))
        return total

    async def acquire(
        self, capabilities: Iterable[str], lease_ms: int, *, bands: str = "hml",
        count: int = 1, forget: Sequence[str] = (), counts: Mapping[str, int] | None = None,
    ) -> AcquireResult:
        """Pop the best `count` jobs the worker may run now (capabilities, limits, fair
        shares: see acquire.lua) into the processing set. `forget` (with `counts`): jobs
        completed since, removed first as `forget` would (one call where there were two)."""
        caps = "," + ",".join(sorted(set(capabilities))) + ","
        keys = [*self._keys6(self.keys.delayed, self.keys.job_meta, self.keys.processing),
                self.keys.sched, self.keys.wakeup, self.keys.counters]
        return AcquireResult.from_reply(await self._call(self._acquire(
            keys=keys, args=[lease_ms, PROMOTE_LIMIT, bands, caps, count, ",".join(forget),
                             pack_counts(counts), WAKEUP_CAP])))

    async def extend(self, job_id: str, lease_ms: int) -> None:
        now_ms = await self.now_ms()
        await self._call(self._client.zadd(self.keys.processing, {job_id: now_ms + lease_ms},
                                           xx=True))

    async def extend_many(self, leases: Sequence[tuple[str, int]]) -> None:
        """Set the Redis deadline of leases still in the processing set: (job id, ms left)."""
        if leases:
            now_ms = await self.now_ms()
            await self._call(self._client.zadd(
                self.keys.processing, {j: now_ms + ms for j, ms in leases}, xx=True))

    async def forget(self, job_ids: Sequence[str], *, dead: bool = False,
                     counts: Mapping[str, int] | None = None) -> None:
        """Remove jobs from every dispatch set (and record them dead if `dead`); `counts` are
        added to the cluster counters in the same call."""
        await self._forget_ids("dead" if dead else "forget", job_ids, counts)

    async def _forget_ids(self, mode: str, job_ids: Sequence[str],
                          counts: Mapping[str, int] | None = None) -> None:
        if not job_ids:
            return
        keys = [*self.keys.priority_queues, self.keys.delayed, self.keys.processing,
                self.keys.job_meta, self.keys.dead_letter, self.keys.wakeup, self.keys.sched,
                self.keys.counters]
        args: list[str | int] = [mode, ",".join(job_ids), WAKEUP_CAP, pack_counts(counts)]
        await self._call(self._forget(keys=keys, args=args))

    async def reprioritize(self, items: Sequence[tuple[str, int]]) -> int:
        """Move queued jobs to the queue of their new priority (keeping their place in
        time) and relabel the others; returns how many queued jobs moved."""
        if not items:
            return 0
        keys = [self.keys.job_meta, *self.keys.priority_queues, self.keys.sched]
        return int(await self._call(self._reprioritize(
            keys=keys, args=[",".join(j for j, _ in items), pack_priorities(p for _, p in items)])))

    async def forget_dead(self, job_ids: Sequence[str]) -> None:
        """Drop jobs from the dead-letter set (requeued or purged)."""
        if job_ids:
            await self._call(self._client.zrem(self.keys.dead_letter, *job_ids))

    async def release_processing(self, job_ids: Sequence[str]) -> None:
        """Drop leases from the processing set (their jobs no longer count as running)."""
        await self._forget_ids("unlease", job_ids)

    async def sched_sync(
        self, limits: dict[str, str] | None, leased: Sequence[tuple[str, int, bool, str]],
        *, version: int = 0,
    ) -> tuple[list[str], int]:
        """Replace the limits mirror with `limits` (field -> "max,rate,burst,weight") of the
        table's `version`, or keep it (None); record leases `(job id, remaining ms, taken by
        the fallback, flow)` the processing set lacks (see sched_sync.lua), recount what runs.
        Returns (ids recorded, held records dropped)."""
        which, flows = flow_positions(f for *_, f in leased)
        args: list[Any] = [-1 if limits is None else len(limits)]
        if limits is not None:
            for field, value in limits.items():
                args += [field, value]
            args.append(version)
        args += [",".join(j for j, *_ in leased),
                 ",".join(str(max(1, ms)) for _, ms, _, _ in leased),
                 "".join("1" if fb else "0" for _, _, fb, _ in leased), which, *flows]
        recorded, dropped = await self._call(self._sched_sync(
            keys=[self.keys.processing, self.keys.sched], args=args))
        return (recorded.split(",") if recorded else []), int(dropped)

    async def limits_version(self) -> int | None:
        """The version of the limits table the mirror holds (None: never mirrored, or lost)."""
        v = await self._call(self._client.get(self.keys.sched_hash("limits_version")))
        return None if v is None else int(v)

    async def set_limit(self, field: str, value: str | None) -> None:
        """Mirror one limit (None: removed) at once, and give back what it parked (see
        limit.lua); the reconciler re-mirrors them all."""
        await self._call(self._limit(keys=[self.keys.wakeup, self.keys.sched],
                                     args=[field, value or "", WAKEUP_CAP]))

    async def sched_state_of(self, fields: Sequence[str]) -> SchedState:
        """The scheduling state of the given "scope\0name" fields only (one HMGET per hash)."""
        if not fields:
            return SchedState(limits={}, running={}, waits={}, buckets={},
                              now_ms=await self.now_ms())
        pipe = self._client.pipeline(transaction=True)
        for name in ("limits", "running", "waits", "buckets"):
            pipe.hmget(self.keys.sched_hash(name), list(fields))
        pipe.time()
        limits, running, waits, buckets, (sec, usec) = await self._call(pipe.execute())

        def present(values: list[str | None]) -> dict[str, str]:
            return {f: v for f, v in zip(fields, values, strict=True) if v is not None}

        return SchedState(
            limits=present(limits), running={k: int(v) for k, v in present(running).items()},
            waits={k: int(v) for k, v in present(waits).items()},
            buckets={k: (float(v.split(",")[0]), int(v.split(",")[1]))
                     for k, v in present(buckets).items()},
            now_ms=int(sec) * 1000 + int(usec) // 1000)

    async def running_counts(self) -> dict[str, int]:
        """Jobs running per limited "scope\0name" (fields leave the hash at 0: its size is
        the work running now)."""
        raw = await self._call(self._client.hgetall(self.keys.sched_hash("running")))
        return {k: int(v) for k, v in raw.items()}

    async def sched_state(self) -> SchedState:
        pipe = self._client.pipeline(transaction=True)
        for name in ("limits", "running", "waits", "buckets"):
            pipe.hgetall(self.keys.sched_hash(name))
        pipe.time()
        limits, running, waits, buckets, (sec, usec) = await self._call(pipe.execute())
        return SchedState(
            limits=dict(limits), running={k: int(v) for k, v in running.items()},
            waits={k: int(v) for k, v in waits.items()},
            buckets={k: (float(v.split(",")[0]), int(v.split(",")[1]))
                     for k, v in buckets.items()},
            now_ms=int(sec) * 1000 + int(usec) // 1000)

    async def wait_for_work(self, timeout_s: float) -> bool:
        """Block until a job is enqueued or `timeout_s` passes; True if woken by a job."""
        if not self.available:
            return False
        try:
            got = await self._blocking.blpop([self.keys.wakeup], timeout=max(timeout_s, 0.01))
        except FAILURES as exc:
            if not unavailable(exc):
                raise
            self.breaker.trip(f"waiting for work: {describe(exc)}")
            return False
        return got is not None

    async def now_ms(self) -> int:
        sec, usec = await self._call(self._client.time())
        return int(sec) * 1000 + int(usec) // 1000

    async def memory_bytes(self) -> int:
        """Memory the Redis server uses (INFO memory: used_memory)."""
        info = await self._call(self._client.info("memory"))
        return int(info["used_memory"])

    async def depths(self) -> dict[str, int]:
        pipe = self._client.pipeline(transaction=False)
        queues = self.keys.queues
        for key in queues.values():
            pipe.zcard(key)
        values = await self._call(pipe.execute())
        return dict(zip(queues, map(int, values), strict=True))

    async def snapshot(self) -> DispatchSnapshot:
        pipe = self._client.pipeline(transaction=True)
        pipe.time()
        for key in self.keys.priority_queues:
            pipe.zrange(key, 0, -1)
        pipe.zrange(self.keys.delayed, 0, -1)
        pipe.zrange(self.keys.processing, 0, -1, withscores=True)
        pipe.hkeys(self.keys.job_meta)
        (sec, usec), high, med, low, delayed, processing, meta = await self._call(pipe.execute())
        return DispatchSnapshot(
            now_ms=int(sec) * 1000 + int(usec) // 1000,
            queued=set(high) | set(med) | set(low),
            delayed=set(delayed),
            processing={j: int(s) for j, s in processing},
            meta=set(meta),
        )

    async def stale_leases(self, limit: int) -> list[str]:
        """Up to `limit` jobs of the processing set whose lease deadline (Redis' clock) has
        passed, earliest first: the sorted set's order, so the cost is the answer's size."""
        sec, usec = await self._call(self._client.time())
        now_ms = int(sec) * 1000 + int(usec) // 1000
        return list(await self._call(self._client.zrangebyscore(
            self.keys.processing, "-inf", now_ms, start=0, num=limit)))

    async def presence(self, job_ids: Sequence[str]) -> Presence:
        """Which of `job_ids` Redis indexes and which it holds as leased: one score lookup
        per id and set, nothing else read."""
        ids = list(job_ids)
        if not ids:
            return Presence(now_ms=0, indexed=set(), processing={})
        pipe = self._client.pipeline(transaction=True)
        pipe.time()
        for key in (*self.keys.priority_queues, self.keys.delayed, self.keys.processing):
            pipe.zmscore(key, ids)
        (sec, usec), *found = await self._call(pipe.execute())
        *index_scores, leased = found
        return Presence(
            now_ms=int(sec) * 1000 + int(usec) // 1000,
            indexed={j for scores in index_scores
                     for j, s in zip(ids, scores, strict=True) if s is not None},
            processing={j: int(s) for j, s in zip(ids, leased, strict=True) if s is not None},
        )

    def sweep_keys(self) -> tuple[str, ...]:
        """What the reconciler's Redis sweep walks, in turn: the priority bands, the delayed
        set, then the job metadata hash (last)."""
        return (*self.keys.priority_queues, self.keys.delayed, self.keys.job_meta)

    async def scan_step(self, key: str, cursor: int, count: int) -> tuple[int, list[str]]:
        """One SCAN step of a sweep key: (the next cursor, 0 when the key is done; the ids
        seen). About `count` entries, whatever the key's size."""
        if key == self.keys.job_meta:
            nxt, fields = await self._call(self._client.hscan(key, cursor, count=count))
            return int(nxt), list(fields)
        nxt, members = await self._call(self._client.zscan(key, cursor, count=count))
        return int(nxt), [m for m, _ in members]

    async def forget_meta(self, job_ids: Sequence[str]) -> None:
        if job_ids:
            await self._call(self._client.hdel(self.keys.job_meta, *job_ids))

    async def set_heartbeat(self, worker_id: str, ttl_s: float, value: str) -> None:
        await self._call(self._client.set(self.keys.heartbeat(worker_id), value,
                                          px=int(ttl_s * 1000)))

    async def count_event(self, name: str, n: int = 1) -> None:
        await self._call(self._client.hincrby(self.keys.counters, name, n))

    async def count_events(self, counts: Mapping[str, int]) -> None:
        pipe = self._client.pipeline(transaction=False)
        for name, n in counts.items():
            pipe.hincrby(self.keys.counters, name, n)
        await self._call(pipe.execute())

    async def state_events_position(self, group: str) -> tuple[str, str | None, int]:
        """(the stream's last id, the last id delivered to `group` or None without that group,
        entries delivered to it but not yet acknowledged)."""
        key = self.keys.state_events
        if not await self._call(self._client.exists(key)):
            return "0-0", None, 0
        info = await self._call(self._client.xinfo_stream(key))
        groups = await self._call(self._client.xinfo_groups(key))
        mine = next((g for g in groups if g["name"] == group), None)
        return (str(info["last-generated-id"]),
                None if mine is None else str(mine["last-delivered-id"]),
                0 if mine is None else int(mine["pending"]))

    async def memory_owner_status(self) -> dict[str, str]:
        """What the state-memory owner last published (empty: no owner)."""
        raw = await self._call(self._client.hgetall(self.keys.memory_owner))
        return {str(k): str(v) for k, v in (raw or {}).items()}

    async def event_counts(self) -> dict[str, int]:
        raw = await self._call(self._client.hgetall(self.keys.counters))
        return {k: int(v) for k, v in raw.items()}

    async def append_events(self, batch: str, *, maxlen: int) -> None:
        """XADD one batch of state events (a JSON list), trimming the stream to about `maxlen`
        entries, oldest first."""
        await self._call(self._client.xadd(self.keys.state_events, {"b": batch},
                                           maxlen=maxlen, approximate=True))

    @property
    def client(self) -> aioredis.Redis:
        """The command connection (the memory owner reads the stream with it)."""
        return self._client

    async def heartbeats_exist(self, worker_ids: list[str]) -> dict[str, bool]:
        pipe = self._client.pipeline(transaction=False)
        for wid in worker_ids:
            pipe.exists(self.keys.heartbeat(wid))
        found = await self._call(pipe.execute())
        return {wid: bool(n) for wid, n in zip(worker_ids, found, strict=True)}

    async def clear_heartbeat(self, worker_id: str) -> None:
        await self._call(self._client.delete(self.keys.heartbeat(worker_id)))

    async def flush_prefix(self) -> int:
        """Delete every key under the prefix (tests, `db reset`)."""
        self.reset_breaker()
        n = 0
        async for key in self._client.scan_iter(match=self.keys.all_pattern, count=1000):
            n += int(await self._call(self._client.delete(key)))
        return n
