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
from typing import Any

from chaos.toxics import Closed, Toxic, ToxicError, make_toxic


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


class _View:
    """What one toxic sees of one direction of a connection."""

    def __init__(self, direction: Direction, removed: asyncio.Event) -> None:
        self._d = direction
        self.removed = removed

    @property
    def sent(self) -> int:
        return self._d.sent

    async def write(self, data: bytes) -> None:
        await self._d.write(data)

    def close(self) -> None:
        self._d.conn.close()

    def reset(self) -> None:
        self._d.conn.reset()

    def uniform(self, a: float, b: float) -> float:
        return self._d.conn.proxy.rng.uniform(a, b)


class Direction:
    def __init__(self, conn: Connection, stream: str, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.conn, self.stream, self.reader, self.writer = conn, stream, reader, writer
        self.sent = 0
        self._applies: dict[str, bool] = {}
        self._removed: dict[str, asyncio.Event] = {}

    def view(self, toxic: Toxic) -> _View | None:
        """This direction as `toxic` sees it, or None if the toxic skips this connection."""
        if toxic.name not in self._applies:
            self._applies[toxic.name] = self.conn.proxy.rng.random() < toxic.toxicity
            self._removed[toxic.name] = asyncio.Event()
        return _View(self, self._removed[toxic.name]) if self._applies[toxic.name] else None

    def toxic_removed(self, name: str) -> None:
        event = self._removed.pop(name, None)
        self._applies.pop(name, None)
        if event is not None:
            event.set()

    async def write(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()
        self.sent += len(data)

    async def pump(self) -> None:
        try:
            while True:
                data = await self.reader.read(65536)
                toxics = self.conn.proxy.toxics_for(self.stream)
                if not data:
                    for toxic in toxics:
                        if (view := self.view(toxic)) is not None:
                            await toxic.on_close(view)
                    self.conn.close()
                    return
                for toxic in toxics:
                    if (view := self.view(toxic)) is not None and data:
                        data = await toxic.on_data(data, view)
                if data:
                    await self.write(data)
        except (Closed, ConnectionError, OSError):
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

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            for w in self.writers:
                w.close()

    def reset(self) -> None:
        """Abort both sockets with a TCP RST (SO_LINGER 0)."""
        self.closed = True
        for w in self.writers:
            sock = w.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            w.transport.abort()

    async def run(self) -> None:
        for d in self.directions():
            for toxic in self.proxy.toxics_for(d.stream):
                if (view := d.view(toxic)) is not None:
                    await toxic.on_start(view)
        await asyncio.gather(self.up.pump(), self.down.pump(), return_exceptions=True)


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
            raise ProxyError(f"toxic {toxic.name} already exists", 409)
        self.toxics[toxic.name] = toxic
        for conn in list(self.connections):
            d = conn.up if toxic.stream == "upstream" else conn.down
            if (view := d.view(toxic)) is not None:
                await toxic.on_start(view)
        return toxic

    def remove_toxic(self, name: str) -> None:
        if self.toxics.pop(name, None) is None:
            raise ProxyError(f"toxic not found: {name}", 404)
        for conn in list(self.connections):
            for d in conn.directions():
                d.toxic_removed(name)

    async def update_toxic(self, name: str, spec: dict[str, Any]) -> Toxic:
        current = self.toxics.get(name)
        if current is None:
            raise ProxyError(f"toxic not found: {name}", 404)
        merged = {**current.as_dict(), **{k: v for k, v in spec.items() if k != "attributes"},
                  "attributes": {**current.attributes, **(spec.get("attributes") or {})},
                  "name": name}
        try:
            make_toxic(merged)
        except ToxicError as exc:
            raise ProxyError(str(exc), 400) from exc
        self.remove_toxic(name)
        return await self.add_toxic(merged)

    async def reset(self) -> None:
        for name in list(self.toxics):
            self.remove_toxic(name)
        if not self.enabled:
            await self.start()
