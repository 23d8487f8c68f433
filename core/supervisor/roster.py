"""The supervisor's roster: which worker runs in which slot, saved to state memory
(`worker-coordination`, key `supervisor:{name}:roster`) on start and after each replacement.

A supervisor that restarts reads its last roster back: from the memory owner when one runs,
else from PostgreSQL (`workers` rows it registered, still ACTIVE, DRAINING or STALE). It then
starts the next generation in every slot and retires the previous workers: a process still
alive on this host is asked to drain (SIGTERM) and killed if it does not; a worker whose
process is gone is marked FAILED and its leases released at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from dataclasses import dataclass
from typing import Any

from core.errors import StoreUnavailable
from core.infra.auth import auth_headers
from core.infra.embedded import pid_alive
from core.memory.events import owner_status, owner_target
from core.memory.port import WORKER_NS
from core.service.jobs import JobService
from core.store.queries import q


@dataclass(frozen=True, kw_only=True)
class RosterEntry:
    slot: int
    generation: int
    worker_id: str
    pid: int | None
    hostname: str


def roster_key(name: str) -> str:
    return f"supervisor:{name}:roster"


def save_roster(service: JobService, name: str, entries: list[RosterEntry]) -> None:
    if service.memory is None:
        return
    service.memory.put(WORKER_NS, roster_key(name),
                       {"slots": [e.__dict__ for e in entries]},
                       service.settings.memory_ttls.worker_state_s)


async def _from_memory(service: JobService, name: str) -> list[RosterEntry] | None:
    status = await owner_status(service.dispatch)  # Redis unreachable: no owner to ask
    url = owner_target(status.get("url"), service.settings.memory_owner_url)
    if url is None:
        return None
    path = f"/memory/{WORKER_NS}/{urllib.parse.quote(roster_key(name))}"

    def fetch() -> Any:
        req = urllib.request.Request(f"{url}{path}",
                                     headers=auth_headers(service.settings.api_token))
        with urllib.request.urlopen(req, timeout=5) as resp:
            return json.loads(resp.read())

    try:
        entry = await asyncio.to_thread(fetch)
    except (urllib.error.URLError, OSError, ValueError):
        return None
    return [RosterEntry(**row) for row in entry["value"]["slots"]]


_ID_RE = re.compile(r"^(?P<name>.+)-(?P<slot>\d{3})-g(?P<gen>\d+)$")


async def _from_postgres(service: JobService, name: str) -> list[RosterEntry]:
    rows = await service.pool.fetch(q("supervisor_workers"), name)
    out = []
    for row in rows:
        m = _ID_RE.match(row["id"])
        if m and m["name"] == name:
            out.append(RosterEntry(slot=int(m["slot"]), generation=int(m["gen"]),
                                   worker_id=row["id"], pid=row["pid"],
                                   hostname=row["hostname"]))
    return out


async def load_roster(service: JobService, name: str) -> tuple[str, list[RosterEntry]]:
    """(source, entries): source is "memory", "postgres" or "none"."""
    entries = await _from_memory(service, name)
    if entries:
        return "memory", entries
    try:
        entries = await _from_postgres(service, name)
    except (StoreUnavailable, OSError):
        entries = []
    return ("postgres" if entries else "none"), entries


def here(entry: RosterEntry) -> bool:
    return entry.hostname == socket.gethostname()


__all__ = ["RosterEntry", "here", "load_roster", "save_roster"]


async def retire(service: JobService, previous: list[RosterEntry], grace_s: float,
                 stats: Counter[str]) -> None:
    """Drain the workers of a previous supervisor run (SIGTERM, SIGKILL after `grace_s`);
    fail and release what cannot drain."""
    reason = "supervisor restarted"
    for entry in previous:
        if here(entry) and entry.pid and pid_alive(entry.pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(entry.pid, signal.SIGCONT)
                os.kill(entry.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for entry in previous:
        # Not our child (its parent was the previous supervisor): no exit to await, so poll.
        while here(entry) and entry.pid and pid_alive(entry.pid) and \
                time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        if here(entry) and entry.pid and pid_alive(entry.pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(entry.pid, signal.SIGKILL)
        with contextlib.suppress(StoreUnavailable):
            await service.deregister_worker(entry.worker_id, status="FAILED", reason=reason)
            await service.release_worker(entry.worker_id, f"worker lost: {reason}")
        stats["workers_retired"] += 1
