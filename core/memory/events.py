"""Write-behind of state memory: job and worker processes emit StateEvents into a bounded
in-process buffer; a background task ships them to the Redis stream `{prefix}:state-events`
one stream entry per batch. Emitting never waits and never fails a job operation (invariant 4):
with the buffer full the oldest events are dropped, with Redis down the batch is dropped, and
both are counted (`memory_dropped`). The stream is trimmed to about `STREAM_MAXLEN` batches.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter, deque
from typing import Any
from urllib.parse import urlsplit

from core.dispatch.index import RedisDispatch
from core.errors import DispatchUnavailable
from core.infra.auth import is_loopback
from core.memory.port import JOB_NS, WORKER_NS, StateEvent, encode_batch
from core.settings import MemoryTtls

STREAM_MAXLEN = 2_000  # entries of up to `batch` events each
OWNER_GROUP = "memory-owner"  # the owner's consumer group on the stream


class MemoryEmitter:
    def __init__(self, dispatch: RedisDispatch, ttls: MemoryTtls | None = None, *,
                 max_buffer: int = 10_000, batch: int = 500, interval_s: float = 0.05) -> None:
        self.dispatch = dispatch
        self.ttls = ttls or MemoryTtls()
        self.max_buffer = max_buffer
        self.batch = batch
        self.interval_s = interval_s
        self.stats: Counter[str] = Counter()
        self._buffer: deque[StateEvent] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    # -- emitting (synchronous, never blocks) -----------------------------------------------
    def emit(self, event: StateEvent) -> None:
        if self._closed:
            return
        if len(self._buffer) >= self.max_buffer:
            self._buffer.popleft()
            self.stats["memory_dropped"] += 1
        self._buffer.append(event)
        self.stats["memory_emitted"] += 1
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
        if len(self._buffer) >= self.batch:
            self._wake.set()

    def put(self, namespace: str, key: str, value: dict[str, Any], ttl_s: float) -> None:
        self.emit(StateEvent(op="put", namespace=namespace, key=key, value=value, ttl_s=ttl_s))

    def delete(self, namespace: str, key: str) -> None:
        self.emit(StateEvent(op="delete", namespace=namespace, key=key))

    # -- what the seed stores ---------------------------------------------------------------
    def job_state(self, job_id: str, state: dict[str, Any]) -> None:
        self.put(JOB_NS, f"job:{job_id}:state", state, self.ttls.job_state_s)

    def job_completed(self, job_id: str, result: Any) -> None:
        self.put(JOB_NS, f"job:{job_id}:result", {"result": result}, self.ttls.job_result_s)
        self.delete(JOB_NS, f"job:{job_id}:state")  # transient state goes; the result stays

    def job_failed(self, job_id: str, failure: dict[str, Any]) -> None:
        self.put(JOB_NS, f"job:{job_id}:failure", failure, self.ttls.failure_s)
        self.delete(JOB_NS, f"job:{job_id}:state")

    def job_finished(self, job_id: str) -> None:
        self.delete(JOB_NS, f"job:{job_id}:state")

    def worker_config(self, worker_id: str, config: dict[str, Any]) -> None:
        self.put(WORKER_NS, f"worker:{worker_id}:config", config, self.ttls.worker_state_s)

    def worker_state(self, worker_id: str, state: dict[str, Any]) -> None:
        self.put(WORKER_NS, f"worker:{worker_id}:state", state, self.ttls.worker_state_s)

    # -- shipping ---------------------------------------------------------------------------
    async def _run(self) -> None:
        while not self._closed or self._buffer:
            if not self._buffer:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=1.0)
                continue
            await self.flush()
            if not self._closed:
                await asyncio.sleep(self.interval_s)  # batching window, not synchronisation

    async def flush(self) -> None:
        while self._buffer:
            n = min(self.batch, len(self._buffer))
            chunk = [self._buffer.popleft() for _ in range(n)]
            try:
                await self.dispatch.append_events(encode_batch(chunk), maxlen=STREAM_MAXLEN)
                self.stats["memory_sent"] += n
            except DispatchUnavailable:
                self.stats["memory_dropped"] += n
                return

    async def close(self) -> None:
        """Ship what is buffered (best effort), then stop."""
        self._closed = True
        self._wake.set()
        if self._task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, timeout=5)


async def owner_status(dispatch: RedisDispatch, *, enabled: bool = True) -> dict[str, Any]:
    """The memory owner's published status: up, down (Qdrant failing: events buffered, then
    dropped), "no owner" (nothing consumes the events), "unknown" (Redis unreachable) or "off"
    (this process emits no events)."""
    if not enabled:
        return {"state": "off"}
    try:
        raw = await dispatch.memory_owner_status()
    except DispatchUnavailable:
        return {"state": "unknown"}
    if not raw:
        return {"state": "no owner"}
    return {k: (int(v) if v.isdigit() else v) for k, v in raw.items()}


def owner_target(advertised: Any, configured: str | None) -> str | None:
    """Where a request for the memory owner goes (with the bearer token): the configured URL
    (`JOBHARNESS_MEMORY_OWNER_URL`) when there is one; else the URL the owner advertised in
    Redis, but only on this machine (loopback): an address anyone with Redis could write is
    never handed the token."""
    if configured:
        return configured.rstrip("/")
    if not isinstance(advertised, str) or not advertised:
        return None
    parts = urlsplit(advertised)
    if parts.scheme not in ("http", "https") or not is_loopback(parts.hostname or ""):
        return None
    return advertised.rstrip("/")


def _stream_id(text: str) -> tuple[int, int]:
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


async def owner_caught_up(dispatch: RedisDispatch, upto: str, group: str = OWNER_GROUP
                          ) -> bool:
    """Whether the memory owner has applied (delivered and acknowledged) every state event up
    to stream id `upto` (events emitted later, e.g. by heartbeats, do not count)."""
    _, delivered, pending = await dispatch.state_events_position(group)
    return delivered is not None and pending == 0 and \
        _stream_id(delivered) >= _stream_id(upto)
