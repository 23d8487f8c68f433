"""The fault proxy: an asyncio TCP proxy with toxiproxy's model (proxies with a listen and an
upstream address, an enabled flag, and toxics per direction). Its HTTP API is in
`chaos/proxy_api.py`; `jobharness chaos proxy` serves both.

Disabling a proxy is a hard partition (listener closed, live connections closed: clients see
refusals and resets); a `timeout` toxic with 0 is a black hole (sockets stay open, nothing
flows), which is what exposes a client without timeouts.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import time
from typing import Any

from chaos.stream import Chan, Chunk, Stage
from chaos.toxics import ResetPeer, Toxic, ToxicError, make_toxic


class ProxyError(Exception):
    """A proxy operation was refused; `status` is the HTTP status it maps to."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def split_address(address: str, field: str) -> tuple[str, int]:
    host, sep, port = str(address).rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ProxyError(f"{field} must be host:port, got {address!r}", 400)
    return host or "127.0.0.1", int(port)


def same_listen(a: str, b: str) -> bool:
    """Two listen addresses name the same socket (hosts resolved, as toxiproxy compares)."""
    (ha, pa), (hb, pb) = split_address(a, "listen"), split_address(b, "listen")
    if pa != pb:
        return False
    try:
        return {socket.gethostbyname(ha)} == {socket.gethostbyname(hb)}
    except OSError:
        return ha == hb


class Direction:
    """One direction of one connection. With no toxic on its stream the reader writes each
    chunk straight on (no copy, no task); with toxics, chunks go through one stage per toxic
    (chaos/toxics.py) to a writer task, in the toxics' order. The chain changes under live
    traffic as toxiproxy's does: a new toxic is appended, a removed one's stage hands what it
    holds on, an updated one restarts in place."""

    def __init__(self, conn: Connection, stream: str, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.conn, self.stream, self.reader, self.writer = conn, stream, reader, writer
        self.sent = 0
        self.stages: dict[str, tuple[Toxic, Stage]] = {}  # in chain order
        self.head: Chan | None = None  # where the reader puts chunks (None: straight on)
        self.tail: Chan | None = None  # what the writer task writes
        self.writer_task: asyncio.Task[None] | None = None
        self.state: dict[str, Any] = {}  # per toxic name, kept across restarts

    # -- the chain --------------------------------------------------------------------------
    def _start(self, toxic: Toxic, stage: Stage) -> None:
        applies = self.conn.proxy.rng.random() < toxic.toxicity
        stage.interrupted = False  # a toxic that does not apply passes chunks on (Toxic.pipe)
        stage.task = asyncio.get_running_loop().create_task(
            toxic.pipe(stage) if applies else Toxic.pipe(toxic, stage))

    def add(self, toxic: Toxic) -> None:
        if self.tail is None:
            self.tail = Chan()
            self.head = self.tail
            self.writer_task = asyncio.get_running_loop().create_task(self._write_loop())
        inbox = Chan()
        last = list(self.stages.values())[-1][1] if self.stages else None
        if last is None:
            self.head = inbox
        else:
            last.outbox = inbox  # sends are synchronous: nothing is in flight
        if toxic.name not in self.state:
            self.state[toxic.name] = toxic.new_state()
        stage = Stage(inbox, self.tail, self.conn, self.state[toxic.name])
        self.stages[toxic.name] = (toxic, stage)
        self._start(toxic, stage)

    async def remove(self, name: str) -> None:
        entry = self.stages.pop(name, None)
        if entry is None:
            return
        toxic, stage = entry
        stage.interrupt()
        if stage.task is not None and not isinstance(toxic, ResetPeer):
            await stage.task  # returns at once: it was waiting, or it hands its chunk on
        if toxic.cleanup(stage):
            return  # it ended the direction (the writer closes the connection)
        while stage.inbox.items:  # newer than anything in its outbox: keep the order
            stage.outbox.put(stage.inbox.take())
        before = [st for n, (_, st) in self.stages.items()
                  if st.outbox is stage.inbox]
        for st in before:
            st.outbox = stage.outbox
        if self.head is stage.inbox:
            self.head = stage.outbox

    async def update(self, toxic: Toxic) -> None:
        _, stage = self.stages[toxic.name]
        stage.interrupt()
        if stage.task is not None:
            await stage.task
        self.stages[toxic.name] = (toxic, stage)
        self._start(toxic, stage)

    def stop(self) -> None:
        for _, stage in self.stages.values():
            if stage.task is not None:
                stage.task.cancel()
        if self.writer_task is not None:
            self.writer_task.cancel()

    # -- the data -----------------------------------------------------------------------------
    async def write(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()
        self.sent += len(data)

    async def _write_loop(self) -> None:
        tail = self.tail
        assert tail is not None
        try:
            while True:
                if not tail.items:
                    if not self.stages and self.head is tail:  # back to straight on
                        self.head = self.tail = self.writer_task = None
                        return
                    tail._getter = asyncio.get_running_loop().create_future()
                    await tail._getter
                    continue
                chunk = tail.take()
                if chunk is None:  # a toxic or the source ended this direction
                    self.conn.close()
                    return
                await self.write(chunk.data)
        except (ConnectionError, OSError):
            self.conn.close()

    async def pump(self) -> None:
        try:
            while True:
                data = await self.reader.read(65536)
                head = self.head
                if head is None:
                    if not data:
                        self.conn.close()
                        return
                    await self.write(data)
                    continue
                head.put(Chunk(data, time.monotonic()) if data else None)
                if not data:
                    return
                await head.room()
        except (ConnectionError, OSError):
            self.conn.close()


class Connection:
    def __init__(self, proxy: Proxy, client: tuple[Any, Any], server: tuple[Any, Any]) -> None:
        self.proxy = proxy
        self.writers = (client[1], server[1])
        self.up = Direction(self, "upstream", client[0], server[1])
        self.down = Direction(self, "downstream", server[0], client[1])
        self.closed = False

    def directions(self) -> tuple[Direction, Direction]:
        return self.up, self.down

    def direction(self, stream: str) -> Direction:
        return self.up if stream == "upstream" else self.down

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            for w in self.writers:
                w.close()
            for d in self.directions():
                d.stop()

    def reset(self) -> None:
        """Abort both sockets with a TCP RST (SO_LINGER 0)."""
        self.closed = True
        for w in self.writers:
            sock = w.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            w.transport.abort()
        for d in self.directions():
            d.stop()

    def uniform(self, a: float, b: float) -> float:
        return self.proxy.rng.uniform(a, b)

    def randint(self, a: int, b: int) -> int:
        return self.proxy.rng.randint(a, b)

    async def run(self) -> None:
        for toxic in list(self.proxy.toxics.values()):
            self.direction(toxic.stream).add(toxic)
        await asyncio.gather(self.up.pump(), self.down.pump(), return_exceptions=True)
        for d in self.directions():  # the writers finish what the chains hold, then close
            if d.writer_task is not None:
                await asyncio.gather(d.writer_task, return_exceptions=True)


class Proxy:
    def __init__(self, name: str, listen: str, upstream: str, *, enabled: bool = True,
                 rng: random.Random | None = None) -> None:
        if not name:
            raise ProxyError("name is required", 400)
        split_address(listen, "listen")
        split_address(upstream, "upstream")
        self.name, self.listen, self.upstream, self.enabled = name, listen, upstream, enabled
        self.rng = rng or random.Random()
        self.toxics: dict[str, Toxic] = {}
        self.connections: set[Connection] = set()
        self._server: asyncio.Server | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "listen": self.listen, "upstream": self.upstream,
                "enabled": self.enabled, "toxics": [t.as_dict() for t in self.toxics.values()]}

    def toxics_for(self, stream: str) -> list[Toxic]:
        return [t for t in self.toxics.values() if t.stream == stream]

    async def start(self) -> None:
        if self._server is not None:
            return
        host, port = split_address(self.listen, "listen")
        try:
            self._server = await asyncio.start_server(self._accept, host, port,
                                                      reuse_address=True)
        except OSError as exc:
            raise ProxyError(f"cannot listen on {self.listen}: {exc}", 500) from exc
        bound = self._server.sockets[0].getsockname()
        self.listen = f"{bound[0]}:{bound[1]}"
        self.enabled = True

    async def stop(self) -> None:
        """Stop listening and close every live connection (a hard partition)."""
        self.enabled = False
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for conn in list(self.connections):
            conn.close()
        if server is not None:
            await server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        host, port = split_address(self.upstream, "upstream")
        try:
            up_reader, up_writer = await asyncio.open_connection(host, port)
        except OSError:
            writer.close()
            return
        if not self.enabled:  # disabled while the upstream connection was being made
            writer.close()
            up_writer.close()
            return
        conn = Connection(self, (reader, writer), (up_reader, up_writer))
        self.connections.add(conn)
        try:
            await conn.run()
        finally:
            conn.close()
            self.connections.discard(conn)

    async def add_toxic(self, spec: dict[str, Any]) -> Toxic:
        try:
            toxic = make_toxic(spec)
        except ToxicError as exc:
            raise ProxyError(str(exc), 400) from exc
        if toxic.name in self.toxics:
            raise ProxyError("toxic already exists", 409)
        self.toxics[toxic.name] = toxic
        for conn in list(self.connections):
            conn.direction(toxic.stream).add(toxic)
        return toxic

    async def remove_toxic(self, name: str) -> None:
        toxic = self.toxics.pop(name, None)
        if toxic is None:
            raise ProxyError("toxic not found", 404)
        for conn in list(self.connections):
            await conn.direction(toxic.stream).remove(name)

    async def update_toxic(self, name: str, spec: dict[str, Any]) -> Toxic:
        """As toxiproxy: only `attributes` (merged) and `toxicity` change; the rest of the
        body (type, stream, name) is ignored."""
        current = self.toxics.get(name)
        if current is None:
            raise ProxyError("toxic not found", 404)
        if not isinstance(spec, dict):
            raise ProxyError("bad request body: a toxic must be a JSON object", 400)
        attributes = spec.get("attributes") or {}
        if not isinstance(attributes, dict):
            raise ProxyError("bad request body: attributes must be an object", 400)
        merged = {**current.as_dict(), "toxicity": spec.get("toxicity", current.toxicity),
                  "attributes": {**current.attributes, **attributes}}
        try:
            toxic = make_toxic(merged)
        except ToxicError as exc:
            raise ProxyError(str(exc), 400) from exc
        self.toxics[name] = toxic
        for conn in list(self.connections):
            await conn.direction(toxic.stream).update(toxic)
        return toxic

    async def reset(self) -> None:
        for name in list(self.toxics):
            await self.remove_toxic(name)
        if not self.enabled:
            await self.start()
