"""Running a process's event loop (`run_async`: uvloop when available), and serving a small ASGI
app (control surface, memory reads, fault-proxy API) inside a process that owns its own
SIGTERM/SIGINT handling: the socket is bound first (so the URL is known before the app is
built), and uvicorn is kept from installing signal handlers of its own."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from collections.abc import AsyncIterator
from typing import Any

from core.infra.auth import TokenGate, check_bind


def run_async(coro: Any) -> Any:
    """Run a coroutine on uvloop when available (faster asyncpg and redis I/O)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def stop_on_signals() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT (call inside the running loop)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


def bind(host: str, port: int, *, token: str | None = None, insecure: bool = False,
         surface: str = "this surface") -> tuple[socket.socket, str]:
    """A listening socket (port 0 picks a free one) and its URL; beyond loopback only with a
    token or `insecure` (core/infra/auth.py)."""
    check_bind(host, token, insecure=insecure, surface=surface)
    sock = socket.create_server((host, port))
    return sock, f"http://{host}:{sock.getsockname()[1]}"


HEADER_READ_TIMEOUT_S = 10.0  # from a connection's first byte (or its opening) to its headers


def http_protocol(header_timeout_s: float = HEADER_READ_TIMEOUT_S) -> type:
    """uvicorn's httptools protocol with a deadline for a request's headers: uvicorn has none
    (a client sending half a request line holds its connection for good, and with it a slot
    of the concurrency limit). Armed when a connection opens and when a request begins,
    disarmed when its headers are complete; on expiry the client gets 408 and the close."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class HeaderDeadlineProtocol(HttpToolsProtocol):
        _header_timer: asyncio.TimerHandle | None = None

        def _arm(self) -> None:
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(header_timeout_s,
                                                          self._headers_too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            if not self.transport.is_closing():
                self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\n"
                                     b"connection: close\r\n\r\n")
                self.transport.close()

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()

        def on_message_begin(self) -> None:
            self._arm()
            super().on_message_begin()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return HeaderDeadlineProtocol


@contextlib.asynccontextmanager
async def serving(app: Any, sock: socket.socket, *, token: str | None
                  ) -> AsyncIterator[None]:
    """Serve `app` on `sock` for the duration of the block; with a token, behind the gate."""
    import uvicorn

    app = TokenGate(app, token)

    class QuietServer(uvicorn.Server):
        def capture_signals(self) -> Any:  # the process owns SIGTERM/SIGINT
            return contextlib.nullcontext()

    server = QuietServer(uvicorn.Config(app, log_level="warning", http=http_protocol(),
                                        timeout_keep_alive=5))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        yield
    finally:
        server.should_exit = True
        await task
