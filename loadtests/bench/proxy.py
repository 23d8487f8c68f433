"""`jobharness bench proxy`: what the fault proxy itself costs, with no toxic. PINGs to Valkey
over one connection (round-trip time, round trips per second) and GETs of a 1 MiB value
(MB/s), straight and through a `jobharness chaos proxy` process (as a run's children reach
the stores), alternated in rounds so that both see the same machine."""

from __future__ import annotations

import asyncio
import time
from statistics import median
from typing import Any
from urllib.parse import urlsplit

import httpx

from core.contract.figures import percentile
from core.infra.auth import auth_headers
from core.infra.embedded import free_port
from core.settings import Settings
from loadtests.procs import Child

Progress = Any


async def _open(host: str, port: int, password: str | None
                ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw connection to Valkey, authenticated when the server has a password."""
    reader, writer = await asyncio.open_connection(host, port)
    if password:
        secret = password.encode()
        writer.write(b"*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n" % (len(secret), secret))
        await writer.drain()
        if await reader.readline() != b"+OK\r\n":
            writer.close()
            raise RuntimeError("Valkey refused the password of the configured URL")
    return reader, writer


async def _pings(host: str, port: int, n: int, password: str | None = None) -> list[float]:
    """Round-trip times (µs) of `n` PINGs over one connection."""
    reader, writer = await _open(host, port, password)
    out = []
    try:
        for _ in range(n):
            t0 = time.perf_counter()
            writer.write(b"PING\r\n")
            await writer.drain()
            if await reader.readline() != b"+PONG\r\n":
                raise RuntimeError("unexpected reply to PING")
            out.append((time.perf_counter() - t0) * 1e6)
    finally:
        writer.close()
        await writer.wait_closed()
    return out


BULK = 1 << 20  # bytes of the value GET reads back


async def _bulk(host: str, port: int, n: int, password: str | None = None) -> float:
    """MB/s of `n` GETs of the BULK-byte value `bench:bulk` over one connection."""
    reader, writer = await _open(host, port, password)
    try:
        t0 = time.perf_counter()
        for _ in range(n):
            writer.write(b"GET bench:bulk\r\n")
            await writer.drain()
            header = await reader.readline()
            if header != f"${BULK}\r\n".encode():
                raise RuntimeError(f"unexpected reply to GET: {header[:40]!r}")
            await reader.readexactly(BULK + 2)
        return n * BULK / (time.perf_counter() - t0) / 1e6
    finally:
        writer.close()
        await writer.wait_closed()


async def _set_bulk(host: str, port: int, password: str | None = None) -> None:
    reader, writer = await _open(host, port, password)
    try:
        writer.write(b"*3\r\n$3\r\nSET\r\n$10\r\nbench:bulk\r\n"
                     + b"$%d\r\n" % BULK + b"x" * BULK + b"\r\n")
        await writer.drain()
        if await reader.readline() != b"+OK\r\n":
            raise RuntimeError("could not SET the bulk value")
    finally:
        writer.close()
        await writer.wait_closed()


async def bench_proxy(settings: Settings, *, ops: int, rounds: int = 5,
                      progress: Progress | None = None) -> dict[str, Any]:
    """p50/p99 round trip straight to Redis and through the proxy, and the difference."""
    url = urlsplit(settings.redis_url or "")
    host, port = url.hostname or "127.0.0.1", int(url.port or 6379)
    api_port = free_port()
    token = settings.api_token
    child = await Child.start("proxy", ["loadtests.cli", "chaos", "proxy", "--port",
                                        str(api_port)],
                              env={"JOBHARNESS_API_TOKEN": token} if token else {},
                              log=settings.data_dir / "logs" / "bench-proxy.log")
    direct: list[float] = []
    proxied: list[float] = []
    per_round = max(1, ops // rounds)
    try:
        api = f"http://127.0.0.1:{api_port}"
        async with httpx.AsyncClient(headers=auth_headers(token)) as http:
            deadline = time.monotonic() + 30
            while True:
                try:
                    await http.get(f"{api}/version")
                    break
                except httpx.TransportError:
                    if time.monotonic() > deadline or not child.running:
                        raise RuntimeError("the fault proxy did not start") from None
                    await asyncio.sleep(0.05)  # polled: another process's readiness
            r = await http.post(f"{api}/proxies", json={
                "name": "bench", "listen": "127.0.0.1:0", "upstream": f"{host}:{port}"})
            p_host, p_port = r.json()["listen"].rsplit(":", 1)
        await _set_bulk(host, port, url.password)
        rates: dict[str, list[float]] = {"direct": [], "proxied": []}
        bulk: dict[str, list[float]] = {"direct": [], "proxied": []}
        for k in range(rounds):
            for name, (h, pt) in (("direct", (host, port)), ("proxied", (p_host, int(p_port)))):
                t0 = time.perf_counter()
                times = await _pings(h, pt, per_round, url.password)
                rates[name].append(per_round / (time.perf_counter() - t0))
                (direct if name == "direct" else proxied).extend(times)
                bulk[name].append(await _bulk(h, pt, 20, url.password))
            if progress is not None:
                progress("round trips", k + 1, rounds)
    finally:
        await child.stop()

    def summary(values: list[float]) -> dict[str, float | None]:
        return {"p50_us": percentile(values, 50), "p99_us": percentile(values, 99)}

    d, p = summary(direct), summary(proxied)
    for out, name in ((d, "direct"), (p, "proxied")):
        out["round_trips_per_s"] = round(float(median(rates[name])))
        out["mb_per_s"] = round(float(median(bulk[name])), 1)
    added = None if d["p50_us"] is None or p["p50_us"] is None else p["p50_us"] - d["p50_us"]
    return {"benchmark": "proxy", "round_trips": len(direct), "direct": d, "proxied": p,
            "added_p50_us": None if added is None else round(added, 1)}
