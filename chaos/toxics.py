"""Toxics: one small class per fault behind one interface, registered by type name, with the
semantics of Shopify's toxiproxy 2.12. A toxic sits on one direction of a connection
(`upstream`: client to server, `downstream`: server to client) as one stage of a pipeline:
chunks, each stamped with the time it arrived at the proxy, come in from the stage before and
go on to the next (`Stage.recv` / `Stage.send`), so a slow stage delays what it holds, never
what arrives behind it. A toxic applies to a given connection with probability `toxicity`,
drawn when its stage starts from the proxy's seedable random source.

Every stage is interruptible (the toxic updated, removed, or another added): it then returns,
passing on any chunk it holds, unless its toxic says otherwise (`cleanup`)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

from chaos.stream import INTERRUPTED, TIMED_OUT, Chunk, Stage

STREAMS = ("upstream", "downstream")


class ToxicError(ValueError):
    """A toxic definition is invalid (HTTP 400)."""


@dataclass(kw_only=True)
class Toxic:
    kind: ClassVar[str] = ""
    defaults: ClassVar[dict[str, float]] = {}
    name: str
    stream: str = "downstream"
    toxicity: float = 1.0
    attributes: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.stream not in STREAMS:
            raise ToxicError("stream was invalid, can be either upstream or downstream")
        if not 0.0 <= float(self.toxicity) <= 1.0:
            raise ToxicError("toxicity must be between 0 and 1")
        merged = dict(self.defaults)
        for key, value in self.attributes.items():
            if key not in self.defaults:
                continue  # as toxiproxy: attributes a toxic does not have are ignored
            if isinstance(value, bool) or not isinstance(value, int | float) \
                    or not 0 <= value < 1e12:  # NaN fails both comparisons
                raise ToxicError(f"{self.kind}.{key} must be a number >= 0")
            merged[key] = value
        self.attributes = merged

    def a(self, key: str) -> float:
        return float(self.attributes[key])

    def new_state(self) -> Any:
        """State kept across interruptions of one connection's stage (limit_data's count)."""
        return None

    async def pipe(self, s: Stage) -> None:
        """Pass every chunk on unchanged (the `noop` toxic, and a toxic that does not apply
        to this connection)."""
        while True:
            c = await s.next()
            if c is None:
                return
            s.send(c)

    def cleanup(self, s: Stage) -> bool:
        """On removal, after the stage returned; True when it ended the direction."""
        return False

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.kind, "stream": self.stream,
                "toxicity": self.toxicity, "attributes": dict(self.attributes)}


class Noop(Toxic):
    kind = "noop"


class Latency(Toxic):
    """Each chunk leaves `latency` ms (plus or minus up to `jitter` ms) after it arrived;
    chunks behind it wait only for their own delay, so throughput is not capped."""

    kind = "latency"
    defaults: ClassVar[dict[str, float]] = {"latency": 0, "jitter": 0}

    async def pipe(self, s: Stage) -> None:
        while True:
            c = await s.next()
            if c is None:
                return
            delay_ms = self.a("latency")
            jitter = int(self.a("jitter"))
            if jitter > 0:
                delay_ms += s.link.randint(0, 2 * jitter - 1) - jitter
            wait = delay_ms / 1000 - (time.monotonic() - c.t)
            if not await s.sleep(wait):
                s.send(c)  # interrupted: leave at once, nothing dropped
                return
            c.t += wait
            s.send(c)


class Bandwidth(Toxic):
    """At most `rate` KB/s (1 KB = 1000 bytes); a chunk larger than 100 ms of the rate goes
    in 100 ms slices."""

    kind = "bandwidth"
    defaults: ClassVar[dict[str, float]] = {"rate": 0}

    async def pipe(self, s: Stage) -> None:
        rate = int(self.a("rate"))  # bytes per millisecond
        owed = 0.0  # seconds of sending still to wait for
        while True:
            c = await s.next()
            if c is None:
                return
            owed = 0.0 if rate <= 0 else owed + len(c.data) / rate / 1000
            data = c.data
            while rate > 0 and len(data) > rate * 100:
                if not await s.sleep(0.1):
                    s.send(Chunk(data, c.t))
                    return
                s.send(Chunk(data[:rate * 100], c.t))
                data = data[rate * 100:]
                owed -= 0.1
            start = time.monotonic()
            if not await s.sleep(owed):
                s.send(Chunk(data, c.t))
                return
            owed -= time.monotonic() - start
            s.send(Chunk(data, c.t))


class SlowClose(Toxic):
    """Delay the close by `delay` ms after the source closed."""

    kind = "slow_close"
    defaults: ClassVar[dict[str, float]] = {"delay": 0}

    async def pipe(self, s: Stage) -> None:
        while True:
            c = await s.recv()
            if c is INTERRUPTED:
                return
            if c is None:
                if await s.sleep(self.a("delay") / 1000):
                    s.close()
                return
            assert isinstance(c, Chunk)
            s.send(c)


class Timeout(Toxic):
    """Every chunk is dropped. With `timeout` > 0 the connection is closed once no data has
    arrived for that long (each chunk restarts the timer); with 0 it stays open and silent (a
    black hole). Removing the toxic closes the connection: what was sent meanwhile is gone."""

    kind = "timeout"
    defaults: ClassVar[dict[str, float]] = {"timeout": 0}

    async def pipe(self, s: Stage) -> None:
        timeout = self.a("timeout") / 1000
        while True:
            c = await s.recv(timeout if timeout > 0 else None)
            if c is INTERRUPTED:
                return
            if c is None or c is TIMED_OUT:
                s.close()
                return
            # anything else: dropped on the floor

    def cleanup(self, s: Stage) -> bool:
        s.close()
        return True


class ResetPeer(Toxic):
    """On the first data (or the close) after it is in place: drop it, wait `timeout` ms, and
    reset both sides of the connection (TCP RST)."""

    kind = "reset_peer"
    defaults: ClassVar[dict[str, float]] = {"timeout": 0}

    async def pipe(self, s: Stage) -> None:
        c = await s.recv()
        if c is INTERRUPTED:
            return
        await asyncio.sleep(self.a("timeout") / 1000)  # not interruptible, as toxiproxy's
        s.closed = True
        s.link.reset()


@dataclass
class _Sent:
    bytes: int = 0


class LimitData(Toxic):
    """Close the connection once `bytes` bytes have passed (the chunk that crosses the limit
    is cut to it)."""

    kind = "limit_data"
    defaults: ClassVar[dict[str, float]] = {"bytes": 0}

    def new_state(self) -> Any:
        return _Sent()

    async def pipe(self, s: Stage) -> None:
        limit, sent = int(self.a("bytes")), s.state
        while True:
            c = await s.next()
            if c is None:
                return
            left = max(0, limit - sent.bytes)
            data = c.data[:left]
            if data:
                s.send(Chunk(data, c.t))
                sent.bytes += len(data)
            if limit - sent.bytes <= 0:
                s.close()
                return


class Slicer(Toxic):
    """Cut each chunk into slices of about `average_size` bytes (plus or minus
    `size_variation`), `delay` microseconds apart."""

    kind = "slicer"
    defaults: ClassVar[dict[str, float]] = {"average_size": 0, "size_variation": 0, "delay": 0}

    def _cuts(self, start: int, end: int, s: Stage) -> list[int]:
        avg, var = int(self.a("average_size")), int(self.a("size_variation"))
        if (end - start) - avg <= var:
            return [start, end]
        mid = start + (end - start) // 2
        if var > 0:
            mid += s.link.randint(0, 2 * var - 1) - var
        return self._cuts(start, mid, s) + self._cuts(mid, end, s)

    async def pipe(self, s: Stage) -> None:
        while True:
            c = await s.next()
            if c is None:
                return
            cuts = self._cuts(0, len(c.data), s)
            for i in range(1, len(cuts), 2):
                s.send(Chunk(c.data[cuts[i - 1]:cuts[i]], c.t))
                if not await s.sleep(self.a("delay") / 1_000_000):
                    s.send(Chunk(c.data[cuts[i]:], c.t))
                    return


REGISTRY: dict[str, type[Toxic]] = {
    t.kind: t for t in (Noop, Latency, Bandwidth, SlowClose, Timeout, ResetPeer, LimitData,
                        Slicer)
}


def make_toxic(spec: dict[str, Any]) -> Toxic:
    """Build a toxic from its JSON form as toxiproxy reads it: stream defaults to downstream
    and is case-insensitive, the name to TYPE_STREAM; unknown types and bad fields raise
    ToxicError."""
    if not isinstance(spec, dict):
        raise ToxicError("bad request body: a toxic must be a JSON object")
    stream = spec.get("stream", "downstream")
    if not isinstance(stream, str) or stream.lower() not in STREAMS:
        raise ToxicError("stream was invalid, can be either upstream or downstream")
    kind = spec.get("type")
    if kind not in REGISTRY:
        raise ToxicError(f"invalid toxic type {kind!r} (known: {', '.join(sorted(REGISTRY))})")
    attributes = spec.get("attributes") or {}
    if not isinstance(attributes, dict):
        raise ToxicError("bad request body: attributes must be an object")
    toxicity = spec.get("toxicity", 1.0)
    if isinstance(toxicity, bool) or not isinstance(toxicity, int | float) \
            or toxicity != toxicity:
        raise ToxicError("bad request body: toxicity must be a number")
    name = spec.get("name") or f"{kind}_{stream}"
    if not isinstance(name, str):
        raise ToxicError("bad request body: name must be a string")
    return REGISTRY[kind](name=name, stream=stream.lower(), toxicity=float(toxicity),
                          attributes=attributes)
