"""How long the largest body the API takes holds its event loop (docs/security.md):

    .venv/bin/python benchmarks/body_stall.py --tries 3

Starts `jobharness api` on this machine's embedded servers, sends a body of numbers just under
the cap (`--mib`, 14) to POST /jobs, and meanwhile asks GET /health every 10 ms: the slowest
/health answer during each send is how long the body held the loop. Prints each try and the
median."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.infra.embedded import free_port  # noqa: E402


async def stall_ms(url: str, body: bytes) -> tuple[int, float]:
    """(status of the send, slowest /health answer in ms while it was in flight)."""
    async with httpx.AsyncClient(base_url=url, timeout=120) as http:
        send = asyncio.create_task(http.post("/jobs", content=body,
                                             headers={"content-type": "application/json"}))
        worst = 0.0
        while not send.done():
            t0 = time.perf_counter()
            await http.get("/health")
            worst = max(worst, time.perf_counter() - t0)
            await asyncio.sleep(0.01)  # the probe's period
        return (await send).status_code, worst * 1000


async def main(mib: float, tries: int) -> None:
    numbers = int(mib * 2**20 / 8)  # "1234567, " is about 8 bytes each
    body = json.dumps({"job_type": "noop", "payload": {"x": list(range(numbers))}}).encode()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    api = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "core.cli", "api", "--port", str(port), cwd=ROOT,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ)
    try:
        async with httpx.AsyncClient() as http:
            deadline = time.monotonic() + 120
            while True:  # readiness: another process
                try:
                    if (await http.get(f"{url}/health")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if api.returncode is not None or time.monotonic() > deadline:
                    raise SystemExit("the API did not start")
                await asyncio.sleep(0.1)
        worst = []
        for i in range(tries):
            status, ms = await stall_ms(url, body)
            worst.append(ms)
            print(f"try {i + 1}: {len(body) / 2**20:.1f} MiB -> {status}, /health waited up to "
                  f"{ms:.0f} ms", flush=True)
        print(f"median {statistics.median(worst):.0f} ms")
    finally:
        api.terminate()
        await asyncio.wait_for(api.wait(), 30)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=float, default=14.0)
    parser.add_argument("--tries", type=int, default=3)
    args = parser.parse_args()
    if not (0.1 <= args.mib <= 64 and 1 <= args.tries <= 20):
        parser.error("--mib must be 0.1..64 and --tries 1..20")
    asyncio.run(main(args.mib, args.tries))
