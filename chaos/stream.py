"""The plumbing of one proxied direction, as toxiproxy's `stream` package and toxic stubs
are: chunks stamped with their arrival time, the FIFO between two stages, and a `Stage` (one
toxic's place in a chain) that receives, sleeps, sends and closes, and can be interrupted at
any of its waits. The toxics themselves are in `chaos/toxics.py`."""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass
class Chunk:
    data: bytes
    t: float  # monotonic: when it arrived at the proxy (moved on by latency it has served)


class _Signal:
    """What `recv` returns instead of a chunk: interrupted, or its timeout passed."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


INTERRUPTED = _Signal("INTERRUPTED")
TIMED_OUT = _Signal("TIMED_OUT")
EOF = None  # the source closed: a stage passes it on by closing (`Stage.close`)


class Chan:
    """An unbounded FIFO between two stages (one reader); the reader of a connection waits
    for `room` before it reads more from its socket, which bounds what a direction holds."""

    __slots__ = ("_getter", "_room", "items", "limit")

    def __init__(self, limit: int = 1024) -> None:
        self.items: deque[Chunk | None] = deque()
        self.limit = limit
        self._getter: asyncio.Future[None] | None = None
        self._room: asyncio.Future[None] | None = None

    def put(self, item: Chunk | None) -> None:
        self.items.append(item)
        _wake(self._getter)

    def take(self) -> Chunk | None:
        item = self.items.popleft()
        if len(self.items) < self.limit:
            _wake(self._room)
        return item

    async def room(self) -> None:
        while len(self.items) >= self.limit:
            self._room = asyncio.get_running_loop().create_future()
            await self._room


def _wake(fut: asyncio.Future[None] | None) -> None:
    if fut is not None and not fut.done():
        fut.set_result(None)


class Link(Protocol):
    """The connection a stage belongs to, as a toxic sees it."""

    def close(self) -> None: ...
    def reset(self) -> None: ...
    def uniform(self, a: float, b: float) -> float: ...
    def randint(self, a: int, b: int) -> int: ...


class Stage:
    """One toxic's place in one direction of one connection: its inbox, its outbox (which the
    direction re-points when the chain changes), its state, and how it is interrupted."""

    def __init__(self, inbox: Chan, outbox: Chan, link: Link, state: Any = None) -> None:
        self.inbox, self.outbox, self.link, self.state = inbox, outbox, link, state
        self.interrupted = False
        self.closed = False
        self._wait: asyncio.Future[None] | None = None
        self.task: asyncio.Task[None] | None = None

    def interrupt(self) -> None:
        self.interrupted = True
        _wake(self._wait)

    async def recv(self, timeout_s: float | None = None) -> Chunk | _Signal | None:
        """The next chunk, EOF (None), INTERRUPTED, or TIMED_OUT after `timeout_s`."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + timeout_s
        while True:
            if self.interrupted:
                return INTERRUPTED
            if self.inbox.items:
                return self.inbox.take()
            if deadline is not None and loop.time() >= deadline:
                return TIMED_OUT
            fut = self._wait = self.inbox._getter = loop.create_future()
            timer = None if deadline is None else loop.call_at(deadline, _wake, fut)
            try:
                await fut
            finally:
                if timer is not None:
                    timer.cancel()

    async def next(self) -> Chunk | None:
        """The next chunk, or None when the stage is done: interrupted, or the source closed
        (passed on by closing)."""
        c = await self.recv()
        if c is None:
            self.close()
            return None
        return c if isinstance(c, Chunk) else None

    async def sleep(self, seconds: float) -> bool:
        """Sleep; False when interrupted meanwhile."""
        if seconds > 0 and not self.interrupted:
            loop = asyncio.get_running_loop()
            fut = self._wait = loop.create_future()
            timer = loop.call_later(seconds, _wake, fut)
            try:
                await fut
            finally:
                timer.cancel()
        return not self.interrupted

    def send(self, chunk: Chunk) -> None:
        self.outbox.put(chunk)

    def close(self) -> None:
        """End this direction after what was sent: EOF downstream (the connection closes)."""
        if not self.closed:
            self.closed = True
            self.outbox.put(EOF)
