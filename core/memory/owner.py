"""The memory owner: the one process that holds the state-memory client.

It reads `{prefix}:state-events` with a consumer group, moves the events into a bounded
in-process buffer and acknowledges them, and applies the buffer to the memory in coalesced
batches. While Qdrant is down or slow, events wait in that buffer (up to `max_buffer`), then
the oldest are dropped and counted: the memory holds state derived from PostgreSQL, so losing
some of it costs history, never a job; `state restore` can refill it from a snapshot.
The owner publishes its status to `{prefix}:memory-owner` (expiring) for /health and /metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import logging
import os
import time
from collections import Counter, deque
from pathlib import Path
from typing import Any

from redis.exceptions import RedisError, ResponseError

from core.dispatch.index import RedisDispatch
from core.errors import DispatchUnavailable, InvalidInput
from core.memory.events import OWNER_GROUP
from core.memory.port import (
    NAMESPACES,
    MemoryUnavailable,
    StateEvent,
    StateMemory,
    coalesce,
    decode_batch,
)

log = logging.getLogger("jobharness.memory")
GROUP = OWNER_GROUP
CLAIM_EVERY_S = 5.0
CLAIM_IDLE_MS = 5_000
SNAPSHOT_FORMAT = "jobharness-state-snapshot/1"


class MemoryOwner:
    def __init__(self, memory: StateMemory, dispatch: RedisDispatch, *,
                 max_buffer: int = 50_000, batch: int = 500, purge_interval_s: float = 60.0,
                 url: str | None = None) -> None:
        self.memory = memory
        self.dispatch = dispatch
        self.max_buffer = max_buffer
        self.batch = batch
        self.purge_interval_s = purge_interval_s
        self.url = url
        self.stats: Counter[str] = Counter()
        self.buffer: deque[StateEvent] = deque()
        self.memory_up = True
        self.last_error = ""
        self._apply_lock = asyncio.Lock()  # snapshots pause the applier
        self._consumer = f"owner-{os.getpid()}"
        self._claim_due = 0.0  # claim stale pending entries at once, then every CLAIM_EVERY_S

    # -- consuming --------------------------------------------------------------------------
    async def _ensure_group(self) -> None:
        try:
            await self.dispatch.client.xgroup_create(self.dispatch.keys.state_events, GROUP,
                                                     id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def consume_once(self, block_ms: int = 1000) -> int:
        """Move up to 20 batches from the stream into the buffer; returns entries read.

        Every `CLAIM_EVERY_S` it first takes over entries delivered but never acknowledged
        for `CLAIM_IDLE_MS` (a read whose reply was lost while this process was paused or
        Redis was away, or a previous owner that died holding them): without that they would
        stay pending and never be applied."""
        client = self.dispatch.client
        key = self.dispatch.keys.state_events
        try:
            await self._ensure_group()
            got: Any = None
            if time.monotonic() >= self._claim_due:
                self._claim_due = time.monotonic() + CLAIM_EVERY_S
                claimed = await client.xautoclaim(key, GROUP, self._consumer,
                                                  min_idle_time=CLAIM_IDLE_MS,
                                                  start_id="0-0", count=100)
                if claimed and claimed[1]:
                    got = [(key, claimed[1])]
                    self.stats["memory_reclaimed"] += len(claimed[1])
            if got is None:
                got = await client.xreadgroup(GROUP, self._consumer, {key: ">"},
                                              count=20, block=block_ms)
        except (RedisError, OSError) as exc:
            raise DispatchUnavailable(f"cannot read state events: {exc}") from exc
        if not got:
            return 0
        ids = []
        for _, entries in got:
            for entry_id, fields in entries:
                ids.append(entry_id)
                try:
                    for event in decode_batch(fields["b"]):
                        self._buffer(event)
                except (KeyError, ValueError, TypeError):
                    self.stats["memory_bad_events"] += 1
        with contextlib.suppress(RedisError, OSError):
            await client.xack(self.dispatch.keys.state_events, GROUP, *ids)
            await client.xdel(self.dispatch.keys.state_events, *ids)
        return len(ids)

    def _buffer(self, event: StateEvent) -> None:
        if len(self.buffer) >= self.max_buffer:
            self.buffer.popleft()
            self.stats["memory_dropped"] += 1
        self.buffer.append(event)

    # -- applying ---------------------------------------------------------------------------
    async def apply_once(self) -> int:
        """Write one coalesced batch; on failure keep it buffered. Returns events applied."""
        async with self._apply_lock:
            if not self.buffer:
                return 0
            n = min(self.batch, len(self.buffer))
            chunk = [self.buffer.popleft() for _ in range(n)]
            ops = coalesce(chunk)
            puts = [(e.namespace, e.key, e.value, e.ttl_s) for e in ops if e.op == "put"]
            deletes = [(e.namespace, e.key) for e in ops if e.op == "delete"]
            try:
                if puts:
                    await self.memory.put_many(puts)
                if deletes:
                    await self.memory.delete_many(deletes)
            except MemoryUnavailable as exc:
                self.buffer.extendleft(reversed(chunk))  # keep order; retry later
                while len(self.buffer) > self.max_buffer:
                    self.buffer.popleft()  # as when consuming: the oldest go first
                    self.stats["memory_dropped"] += 1
                self.memory_up = False
                self.last_error = str(exc)[:300]
                self.stats["memory_write_failures"] += 1
                return 0
            self.memory_up = True
            self.stats["memory_written"] += n
            self.stats["memory_ops"] += len(ops)
            return n

    async def drain(self, timeout_s: float = 30.0) -> bool:
        """Apply everything buffered now (snapshots, shutdown); False if it could not."""
        deadline = time.monotonic() + timeout_s
        while self.buffer and time.monotonic() < deadline:
            if await self.apply_once() == 0 and self.buffer:
                return False
        return not self.buffer

    # -- status -----------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        return {"state": "up" if self.memory_up else "down", "buffered": len(self.buffer),
                "url": self.url or "", "pid": os.getpid(), "last_error": self.last_error,
                **{k: v for k, v in self.stats.items()}}

    async def publish_status(self, ttl_s: float = 5.0) -> None:
        client, key = self.dispatch.client, self.dispatch.keys.memory_owner
        with contextlib.suppress(RedisError, OSError):
            await client.hset(key, mapping={k: str(v) for k, v in self.status().items()})
            await client.expire(key, int(ttl_s))

    # -- the loops --------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        tasks = [asyncio.create_task(self._consume_loop(stop)),
                 asyncio.create_task(self._apply_loop(stop)),
                 asyncio.create_task(self._housekeeping(stop))]
        await stop.wait()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.drain(timeout_s=5)
        await self.publish_status(ttl_s=1)

    async def _consume_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.consume_once(block_ms=500)
            except DispatchUnavailable:
                self.stats["redis_read_failures"] += 1
                await _pause(stop, 1.0)

    async def _apply_loop(self, stop: asyncio.Event) -> None:
        backoff = 0.2
        while not stop.is_set():
            if not self.buffer:
                await _pause(stop, 0.05)
                continue
            if await self.apply_once() == 0 and self.buffer:
                await _pause(stop, backoff)  # the memory is failing: back off, keep buffering
                backoff = min(backoff * 2, 5.0)
            else:
                backoff = 0.2

    async def _housekeeping(self, stop: asyncio.Event) -> None:
        last_purge = time.monotonic()
        while not stop.is_set():
            await self.publish_status()
            if time.monotonic() - last_purge >= self.purge_interval_s:
                last_purge = time.monotonic()
                with contextlib.suppress(MemoryUnavailable):
                    self.stats["memory_purged"] += await self.memory.purge_expired()
            await _pause(stop, 1.0)

    # -- snapshots --------------------------------------------------------------------------
    async def snapshot(self, path: Path) -> dict[str, Any]:
        """Write every live entry of both namespaces, consistent: nothing is applied while the
        snapshot is read (pending events are applied first)."""
        if not await self.drain():
            raise MemoryUnavailable("cannot snapshot: buffered events cannot be written")
        async with self._apply_lock:
            entries = {ns: await self.memory.list(ns, limit=100_000) for ns in NAMESPACES}
        return write_snapshot(path, entries)

    async def restore(self, path: Path, *, wipe: bool = False) -> dict[str, Any]:
        return await restore_snapshot(self.memory, path, wipe=wipe, lock=self._apply_lock)


async def _pause(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


def write_snapshot(path: Path, entries: dict[str, list[Any]]) -> dict[str, Any]:
    header = {"format": SNAPSHOT_FORMAT, "created_at": time.time(),
              "counts": {ns: len(es) for ns, es in entries.items()}}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with gzip.open(tmp, "wt") as out:
        out.write(json.dumps(header) + "\n")
        for es in entries.values():
            for e in es:
                out.write(json.dumps(e.as_dict(), default=str) + "\n")
    tmp.replace(path)  # a snapshot file is complete or absent
    return {"path": str(path), **header}


async def restore_snapshot(memory: StateMemory, path: Path, *, wipe: bool,
                           lock: asyncio.Lock | None = None) -> dict[str, Any]:
    """Load a snapshot; entries keep their remaining TTL and already-expired ones are skipped.
    Versions restart from 1 (a restored entry is a new write)."""
    try:
        with gzip.open(path, "rt") as fh:
            header = json.loads(fh.readline())
            rows = [json.loads(line) for line in fh if line.strip()]
    except (OSError, ValueError, EOFError) as exc:
        raise MemoryUnavailable(f"cannot read snapshot {path}: {exc}") from exc
    if not isinstance(header, dict) or header.get("format") != SNAPSHOT_FORMAT:
        raise InvalidInput("snapshot", f"{path.name} is not a state snapshot")
    for i, r in enumerate(rows, start=2):  # all checked before anything is wiped or written
        if not isinstance(r, dict) or r.get("namespace") not in NAMESPACES \
                or not isinstance(r.get("key"), str) or not 0 < len(r["key"]) <= 500 \
                or isinstance(r.get("expires_at"), bool) \
                or not isinstance(r.get("expires_at"), int | float) or "value" not in r:
            raise InvalidInput("snapshot", f"{path.name} line {i}: not an entry (namespace, "
                               "key, value, expires_at); nothing was changed")
    now = time.time()
    items = [(r["namespace"], r["key"], r["value"], r["expires_at"] - now)
             for r in rows if r["expires_at"] > now]
    async with lock or asyncio.Lock():
        if wipe:
            await memory.wipe()
        for i in range(0, len(items), 500):
            await memory.put_many(items[i:i + 500])
    return {"path": str(path), "restored": len(items), "skipped_expired": len(rows) - len(items),
            "snapshot_created_at": header.get("created_at")}
