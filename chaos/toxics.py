"""Toxics: one small class per fault behind one interface, registered by type name, as in
Shopify's toxiproxy. A toxic sits on one direction of a connection (`upstream`: client to
server, `downstream`: server to client) and applies to a given connection with probability
`toxicity`, drawn once per connection from the proxy's seedable random source."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol


class ToxicError(ValueError):
    """A toxic definition is invalid (HTTP 400)."""


class Link(Protocol):
    """One direction of one proxied connection, as a toxic sees it."""

    sent: int  # bytes passed so far in this direction
    removed: asyncio.Event  # set when the toxic being applied is removed

    async def write(self, data: bytes) -> None: ...
    def close(self) -> None: ...
    def reset(self) -> None: ...
    def uniform(self, a: float, b: float) -> float: ...


class Closed(Exception):
    """The toxic closed the connection."""


@dataclass(kw_only=True)
class Toxic:
    kind: ClassVar[str] = ""
    defaults: ClassVar[dict[str, float]] = {}
    name: str
    stream: str = "downstream"
    toxicity: float = 1.0
    attributes: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.stream not in ("upstream", "downstream"):
            raise ToxicError(f"stream must be upstream or downstream, got {self.stream!r}")
        if not 0.0 <= float(self.toxicity) <= 1.0:
            raise ToxicError("toxicity must be between 0 and 1")
        unknown = set(self.attributes) - set(self.defaults)
        if unknown:
            raise ToxicError(f"{self.kind}: unknown attribute(s) {', '.join(sorted(unknown))}")
        merged = dict(self.defaults)
        for key, value in self.attributes.items():
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ToxicError(f"{self.kind}.{key} must be a number >= 0")
            merged[key] = value
        self.attributes = merged

    def a(self, key: str) -> float:
        return float(self.attributes[key])

    async def on_data(self, data: bytes, link: Link) -> bytes:
        """Transform (or delay, or hold) one chunk; return what to pass on."""
        return data

    async def on_close(self, link: Link) -> None:
        """The source closed its side."""

    async def on_start(self, link: Link) -> None:
        """The connection was established (or the toxic was added to a live one)."""

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.kind, "stream": self.stream,
                "toxicity": self.toxicity, "attributes": dict(self.attributes)}


class Latency(Toxic):
    """Delay each chunk by `latency` ms plus or minus up to `jitter` ms."""

    kind = "latency"
    defaults: ClassVar[dict[str, float]] = {"latency": 0, "jitter": 0}

    async def on_data(self, data: bytes, link: Link) -> bytes:
        jitter = self.a("jitter")
        delay = self.a("latency") + (link.uniform(-jitter, jitter) if jitter else 0)
        if delay > 0:
            await asyncio.sleep(delay / 1000)
        return data


class Bandwidth(Toxic):
    """Limit the rate to `rate` KB/s."""

    kind = "bandwidth"
    defaults: ClassVar[dict[str, float]] = {"rate": 0}

    async def on_data(self, data: bytes, link: Link) -> bytes:
        rate = self.a("rate")
        if rate > 0:
            await asyncio.sleep(len(data) / (rate * 1024))
        return data


class SlowClose(Toxic):
    """Delay closing the connection by `delay` ms after the source closed."""

    kind = "slow_close"
    defaults: ClassVar[dict[str, float]] = {"delay": 0}

    async def on_close(self, link: Link) -> None:
        await asyncio.sleep(self.a("delay") / 1000)


class Timeout(Toxic):
    """Let no data through; close after `timeout` ms, or with 0 hold it until the toxic is
    removed (a black hole: sockets stay open and hang)."""

    kind = "timeout"
    defaults: ClassVar[dict[str, float]] = {"timeout": 0}

    async def _hold(self, link: Link) -> None:
        timeout = self.a("timeout")
        try:
            await asyncio.wait_for(link.removed.wait(), timeout / 1000 if timeout else None)
        except TimeoutError:
            link.close()
            raise Closed() from None

    async def on_data(self, data: bytes, link: Link) -> bytes:
        await self._hold(link)
        return data  # removed: the held data flows again

    async def on_start(self, link: Link) -> None:
        if self.a("timeout"):
            asyncio.get_running_loop().create_task(self._close_later(link))

    async def _close_later(self, link: Link) -> None:
        with _suppress_closed():
            await self._hold(link)


class ResetPeer(Toxic):
    """Reset the connection (TCP RST) after `timeout` ms, at once with 0."""

    kind = "reset_peer"
    defaults: ClassVar[dict[str, float]] = {"timeout": 0}

    async def on_start(self, link: Link) -> None:
        asyncio.get_running_loop().create_task(self._reset_later(link))

    async def _reset_later(self, link: Link) -> None:
        try:
            await asyncio.wait_for(link.removed.wait(), self.a("timeout") / 1000 or 0.0)
        except TimeoutError:
            link.reset()

    async def on_data(self, data: bytes, link: Link) -> bytes:
        if not self.a("timeout"):
            link.reset()
            raise Closed()
        return data


class LimitData(Toxic):
    """Close the connection once `bytes` bytes have passed."""

    kind = "limit_data"
    defaults: ClassVar[dict[str, float]] = {"bytes": 0}

    async def on_data(self, data: bytes, link: Link) -> bytes:
        limit = int(self.a("bytes"))
        left = limit - link.sent
        if len(data) < left:
            return data
        if left > 0:
            await link.write(data[:left])
        link.close()
        raise Closed()


class Slicer(Toxic):
    """Cut each chunk into slices of about `average_size` bytes (plus or minus
    `size_variation`), `delay` microseconds apart."""

    kind = "slicer"
    defaults: ClassVar[dict[str, float]] = {"average_size": 0, "size_variation": 0, "delay": 0}

    async def on_data(self, data: bytes, link: Link) -> bytes:
        avg = int(self.a("average_size"))
        if avg <= 0:
            return data
        var = int(min(self.a("size_variation"), avg - 1))
        pos = 0
        while pos < len(data):
            size = max(1, avg + int(link.uniform(-var, var))) if var else avg
            await link.write(data[pos:pos + size])
            pos += size
            if self.a("delay") and pos < len(data):
                await asyncio.sleep(self.a("delay") / 1_000_000)
        return b""


REGISTRY: dict[str, type[Toxic]] = {
    t.kind: t for t in (Latency, Bandwidth, SlowClose, Timeout, ResetPeer, LimitData, Slicer)
}


def make_toxic(spec: dict[str, Any]) -> Toxic:
    """Build a toxic from its JSON form; unknown types and bad fields raise ToxicError."""
    if not isinstance(spec, dict):
        raise ToxicError("a toxic must be a JSON object")
    kind = spec.get("type")
    if kind not in REGISTRY:
        raise ToxicError(f"unknown toxic type {kind!r} (known: {', '.join(sorted(REGISTRY))})")
    stream = spec.get("stream") or "downstream"
    attributes = spec.get("attributes") or {}
    if not isinstance(attributes, dict):
        raise ToxicError("attributes must be an object")
    toxicity = spec.get("toxicity", 1.0)
    if isinstance(toxicity, bool) or not isinstance(toxicity, int | float):
        raise ToxicError("toxicity must be a number")
    name = spec.get("name") or f"{kind}_{stream}"
    if not isinstance(name, str):
        raise ToxicError("name must be a string")
    return REGISTRY[kind](name=name, stream=stream, toxicity=float(toxicity),
                          attributes=attributes)


class _suppress_closed:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> bool:
        return exc[0] is Closed
