"""`jobharness chaos proxy`: the toxiproxy-compatible fault proxy as a process."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
from pathlib import Path
from typing import Any

from core.settings import Settings


async def _serve_proxy(args: argparse.Namespace, specs: list[dict[str, Any]]) -> None:
    import uvicorn

    from chaos.proxy_api import ProxyCollection, proxy_app
    from core.proccli import _quiet_server_class

    collection = ProxyCollection(seed=args.seed)
    for spec in specs:
        await collection.create(spec)
    sock = socket.create_server((args.host, args.port), reuse_port=False)
    server = _quiet_server_class()(uvicorn.Config(proxy_app(collection), log_level="warning"))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    print(f"fault proxy API at http://{args.host}:{sock.getsockname()[1]}", flush=True)
    await stop.wait()
    server.should_exit = True
    await serving
    await collection.close()


def cmd_chaos(args: argparse.Namespace, settings: Settings) -> int:
    from core.cli import run_async
    from core.errors import JobHarnessError

    specs: list[dict[str, Any]] = []
    if args.config:
        try:
            specs = json.loads(Path(args.config).read_text())
        except (OSError, ValueError) as exc:
            raise JobHarnessError(f"cannot read proxy config {args.config}: {exc}") from exc
        if not isinstance(specs, list):
            raise JobHarnessError(f"{args.config} must hold a JSON list of proxies")
    run_async(_serve_proxy(args, specs))
    return 0


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("chaos", parents=[common], help="fault injection")
    ch = p.add_subparsers(dest="action", required=True)
    px = ch.add_parser("proxy", parents=[common],
                       help="serve the toxiproxy-compatible fault proxy")
    px.add_argument("--host", default="127.0.0.1")
    px.add_argument("--port", type=int, default=8474, help="API port (8474, as toxiproxy)")
    px.add_argument("--seed", type=int, help="seed of the toxicity draws")
    px.add_argument("--config", help="JSON list of proxies to create at start")
    p.set_defaults(func=cmd_chaos, needs_settings=True)
