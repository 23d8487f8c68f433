"""What one round trip to a store costs the calling process (docs/performance.md), in a
throw-away schema on this machine's embedded servers:

    .venv/bin/python benchmarks/call_cost.py --calls 3000 --rounds 3

The client's CPU time (`time.process_time`: the process's user and system time, so a busy
machine inflates it less than wall time) per call, for the same trivial request sent through
each layer a worker's calls go through: PostgreSQL's `SELECT 1` on a raw asyncpg connection,
on a connection the pool keeps for a stream of statements (`StorePool.stream`), and borrowed
from the pool for each call (`pool.fetch`); Redis' `PING` written on a connection the client
owns, and through the redis-py client (its connection pool, command packing and reply
parsing); and, for scale, a bare TCP round trip to an echo process on loopback. Each row is
the median of `--rounds`, the rows interleaved round by round."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import asyncpg
import uvloop

from core.service.runtime import endpoints, open_runtime
from core.settings import load_settings
from core.store.pools import StorePool
from loadtests.scratch import scratch_schema

PING = b"*1\r\n$4\r\nPING\r\n"


async def per_call_us(call: Callable[[], Awaitable[Any]], calls: int) -> float:
    for _ in range(min(200, calls)):  # warmed up: statements prepared, connections open
        await call()
    t0 = time.process_time()
    for _ in range(calls):
        await call()
    return (time.process_time() - t0) / calls * 1e6


def echo_server() -> tuple[int, int]:
    """A forked process echoing one loopback TCP connection; (its pid, its port)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    pid = os.fork()
    if pid == 0:  # the child: echo until the client goes
        conn, _ = srv.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while data := conn.recv(4096):
            conn.sendall(data)
        os._exit(0)
    srv.close()
    return pid, port


async def main(calls: int, rounds: int, port: int) -> None:
    with endpoints(load_settings(), keep_running=True) as settings:
        settings = replace(settings, memory=False)
        async with scratch_schema(settings, f"call_cost_{os.getpid()}") as scratch, \
                open_runtime(scratch, pool_size=2, redis_connections=2,
                             migrate_first=False) as rt:
            pool = rt.pool
            assert isinstance(pool, StorePool)
            pool.stream.idle_s = 3600.0
            raw_pg = await asyncpg.connect(scratch.pg_dsn)
            client = rt.dispatch.client
            redis_conn = await client.connection_pool.get_connection()
            reader, writer = await asyncio.open_connection("127.0.0.1", port)

            async def raw_redis() -> Any:
                await redis_conn.send_packed_command(PING, check_health=False)
                return await redis_conn.read_response()

            async def tcp() -> bytes:
                writer.write(b"x")
                return await reader.readexactly(1)

            rows: dict[str, Callable[[], Awaitable[Any]]] = {
                "TCP round trip to an echo process": tcp,
                "PostgreSQL SELECT 1, raw connection": lambda: raw_pg.fetch("SELECT 1"),
                "PostgreSQL SELECT 1, kept connection": lambda: pool.fetch_held("SELECT 1"),
                "PostgreSQL SELECT 1, pool borrow": lambda: pool.fetch("SELECT 1"),
                "Redis PING, owned connection": raw_redis,
                "Redis PING, redis-py client": client.ping,
            }
            samples: dict[str, list[float]] = {name: [] for name in rows}
            try:
                for _ in range(rounds):
                    for name, call in rows.items():
                        samples[name].append(await per_call_us(call, calls))
            finally:
                writer.close()
                await client.connection_pool.release(redis_conn)
                await raw_pg.close()
    print(f"client CPU per call, median of {rounds} rounds of {calls} calls:")
    for name, values in samples.items():
        print(f"  {name:<40} {statistics.median(values):6.1f} us"
              f"  ({' / '.join(f'{v:.1f}' for v in values)})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if not (100 <= args.calls <= 100_000 and 1 <= args.rounds <= 20):
        parser.error("--calls must be 100..100000 and --rounds 1..20")
    echo_pid, echo_port = echo_server()
    try:
        uvloop.run(main(args.calls, args.rounds, echo_port))
    finally:
        os.kill(echo_pid, signal.SIGKILL)
        os.waitpid(echo_pid, 0)
