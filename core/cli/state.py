"""`jobharness state ...`: run the memory owner, and read, purge, snapshot and restore state
memory through it (or, when no owner is running, by opening the memory directly)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from core.contract import runfolder
from core.errors import JobHarnessError
from core.settings import Settings

STATE_FILE = runfolder.MEMORY_OWNER_STATE


def open_memory(settings: Settings) -> Any:
    from core.memory.qdrant import QdrantStateMemory

    if settings.qdrant_url:
        return QdrantStateMemory(url=settings.qdrant_url, prefix=settings.prefix,
                                 api_key=settings.qdrant_api_key)
    return QdrantStateMemory(path=settings.qdrant_path, prefix=settings.prefix)


async def _serve(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:

    from core.infra.serving import bind, serving, stop_on_signals
    from core.memory.http import memory_app
    from core.memory.owner import MemoryOwner
    from core.service.runtime import create_dispatch

    if args.nice:
        # Write-behind is background work: on a shared machine it yields to job operations.
        os.nice(args.nice)
    memory = await open_memory(settings).open()
    dispatch = create_dispatch(settings, max_connections=2)
    sock, url = bind(args.host, args.port, token=settings.api_token, insecure=args.insecure,
                     surface="the memory owner")
    # the URL others reach it by: in a container network not its own bind address
    url = args.advertise_url or url
    owner = MemoryOwner(memory, dispatch, url=url, max_buffer=args.max_buffer)
    stop = stop_on_signals()
    if args.duration_s:
        asyncio.get_running_loop().call_later(args.duration_s, stop.set)
    path = settings.data_dir / STATE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"url": url, "pid": os.getpid(), "memory": memory.where}))
    logging.getLogger("jobharness.memory").info("memory owner at %s over %s", url,
                                                memory.where)
    try:
        snapshots = settings.data_dir / SNAPSHOTS
        snapshots.mkdir(parents=True, exist_ok=True)
        async with serving(memory_app(owner, snapshots), sock, token=settings.api_token):
            await owner.run(stop)
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        await dispatch.close()
        await memory.close()
    return {"url": url, "memory": memory.where, **owner.status()}


SNAPSHOTS = "snapshots"  # the owner's folder of snapshot files, under the data dir


def owner_url(settings: Settings) -> str | None:
    """The running owner's URL, from its state file (None when no owner runs here)."""
    try:
        data = json.loads((settings.data_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return str(data["url"]) if data.get("url") else None


def ask_owner(url: str, path: str, body: dict[str, Any] | None = None, *,
                  token: str | None = None) -> Any:
    from core.infra.auth import auth_headers

    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url + path, data=data, method="POST" if data else "GET",
                                 headers={"Content-Type": "application/json",
                                          **auth_headers(token)})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        detail = json.loads(exc.read() or b"{}").get("detail", [{}])[0].get("msg", exc.reason)
        raise JobHarnessError(f"memory owner: {detail}") from exc
    except OSError as exc:
        raise JobHarnessError(f"memory owner at {url} unreachable: {exc}") from exc


async def _direct(args: argparse.Namespace, settings: Settings) -> Any:
    """No owner running: open the memory here (a local folder is then free)."""
    from core.memory.owner import restore_snapshot, write_snapshot

    memory = await open_memory(settings).open()
    try:
        if args.action == "get":
            entry = await memory.get(args.namespace, args.key)
            if entry is None:
                raise JobHarnessError(f"{args.namespace}/{args.key} not found")
            return entry.as_dict()
        if args.action == "list":
            return [e.as_dict() for e in await memory.list(args.namespace, group=args.group,
                                                            limit=args.limit)]
        if args.action == "stats":
            from core.memory.port import NAMESPACES

            return {"owner": None, "memory": memory.where,
                    "entries": {ns: await memory.count(ns) for ns in NAMESPACES}}
        if args.action == "purge":
            return {"purged": await memory.purge_expired()}
        if args.action == "snapshot":
            from core.memory.port import NAMESPACES

            return write_snapshot(Path(args.path), {ns: await memory.list(ns, limit=100_000)
                                                    for ns in NAMESPACES})
        return await restore_snapshot(memory, Path(args.path), wipe=args.wipe)
    finally:
        await memory.close()


def cmd_state(args: argparse.Namespace, settings: Settings) -> int:
    from core.cli.output import print_json, run_async

    if args.action == "restore" and args.wipe and not args.yes:
        raise JobHarnessError("state restore --wipe empties the memory before it restores; "
                              "give --yes")
    if args.action == "purge" and not args.yes:
        raise JobHarnessError("state purge deletes the expired entries for good (reads and "
                              "snapshots already leave them out); give --yes")
    if args.action == "serve":
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
        from core.service.runtime import endpoints

        with endpoints(settings) as resolved:
            print_json(run_async(_serve(args, resolved)))
        return 0
    url = owner_url(settings)
    if url is None:
        print_json(run_async(_direct(args, settings)))
        return 0
    quoted = urllib.parse.quote

    def owner_request(path: str, body: dict[str, Any] | None = None) -> Any:
        return ask_owner(url, path, body, token=settings.api_token)

    if args.action == "get":
        out = owner_request(f"/memory/{quoted(args.namespace)}/{quoted(args.key)}")
    elif args.action == "list":
        q = urllib.parse.urlencode({k: v for k, v in (("group", args.group),
                                                      ("limit", args.limit)) if v})
        out = owner_request(f"/memory/{quoted(args.namespace)}?{q}")
    elif args.action == "stats":
        out = owner_request("/stats")
    elif args.action == "purge":
        out = owner_request("/purge", {})
    elif Path(args.path).name != args.path:
        raise JobHarnessError(f"a memory owner runs, so snapshots are named: give a file name "
                              f"(kept in its {settings.data_dir / SNAPSHOTS}), not a path")
    elif args.action == "snapshot":
        out = owner_request("/snapshot", {"name": args.path})
    else:
        out = owner_request("/restore", {"name": args.path, "wipe": args.wipe})
    print_json(out)
    return 0


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("state", parents=[common], help="state memory (Qdrant)")
    st = p.add_subparsers(dest="action", required=True)
    s = st.add_parser("serve", parents=[common], help="run the memory owner")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=0)
    s.add_argument("--insecure", action="store_true",
                   help="listen beyond loopback without JOBHARNESS_API_TOKEN")
    s.add_argument("--advertise-url",
                   help="the URL the API and supervisors reach this owner by (default: the "
                   "address it listens on), e.g. http://memory-owner:8070 in compose")
    s.add_argument("--max-buffer", type=int, default=50_000)
    s.add_argument("--duration-s", type=float)
    s.add_argument("--nice", type=int, default=10,
                   help="lower this process's CPU priority by N (10; 0 keeps it)")
    g = st.add_parser("get", parents=[common])
    g.add_argument("namespace", choices=["job-management", "worker-coordination"])
    g.add_argument("key")
    ls = st.add_parser("list", parents=[common])
    ls.add_argument("namespace", choices=["job-management", "worker-coordination"])
    ls.add_argument("--group", help="e.g. job:ID or worker:ID")
    ls.add_argument("--limit", type=int, default=100)
    st.add_parser("stats", parents=[common])
    pu = st.add_parser("purge", parents=[common], help="delete expired entries now (--yes)")
    pu.add_argument("--yes", action="store_true", help="yes, delete the expired entries")
    sn = st.add_parser("snapshot", parents=[common])
    sn.add_argument("path")
    r = st.add_parser("restore", parents=[common])
    r.add_argument("path")
    r.add_argument("--wipe", action="store_true",
                   help="empty the memory first (needs --yes: what it held is gone)")
    r.add_argument("--yes", action="store_true", help="--wipe: yes, empty the memory")
    p.set_defaults(func=cmd_state, needs_settings=True)
