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


@contextlib.asynccontextmanager
async def serving(app: Any, sock: socket.socket, *, token: str | None
                  ) -> AsyncIterator[None]:
    """Serve `app` on `sock` for the duration of the block; with a token, behind the gate."""
    import uvicorn

    app = TokenGate(app, token)

    class QuietServer(uvicorn.Server):
        def capture_signals(self) -> Any:  # the process owns SIGTERM/SIGINT
            return contextlib.nullcontext()

    server = QuietServer(uvicorn.Config(app, log_level="warning"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        yield
    finally:
        server.should_exit = True
        await task
