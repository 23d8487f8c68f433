"""Fault actions, usable from drills, Python and the CLI. Network faults go through a
toxiproxy API (ours locally, Shopify's in staging); process faults through a supervisor's
control surface (locally and in staging) or, for processes we started, by signal.

Each action returns what it did (for the journal) and has a heal that undoes it; heals are
idempotent so rollbacks may run them again safely.

Length: every fault a drill may name (network, process, store and Byzantine) and the registry
that maps drill files to them live together, so a drill file's vocabulary is one module.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from core.errors import JobHarnessError, ServiceError
from core.infra.auth import auth_headers
from core.infra.embedded import PG_STOP_MODES, EmbeddedServices
from core.worker.faults import BENIGN_MODES, BYZANTINE_MODES, FATAL_MODES, MODES


class ActionError(RuntimeError):
    """A fault could not be applied."""


STORES = ("redis", "postgres")


def default_proxies() -> dict[str, dict[str, str]]:
    """One proxy per store for every client (toxiproxy's `redis` and `postgres`, staging)."""
    return {"all": {store: store for store in STORES}}


@dataclass
class Endpoints:
    """Where faults are applied: the proxy API and, per client group, the proxy of each store
    (a local run gives the API, the supervisor and each worker group their own, so a fault can
    hit some clients only), the supervisor's control URL, and pids of processes started by
    this run (API replicas, memory owner)."""

    proxy_api: str | None = None
    proxies: dict[str, dict[str, str]] = field(default_factory=default_proxies)
    control_url: str | None = None
    pids: dict[str, int] | None = None
    # starts a process this run started again once it has exited (API replicas), -> new pid
    respawn: Callable[[str], Awaitable[int]] | None = None
    services: EmbeddedServices | None = None  # the embedded servers, when the run uses them
    token: str | None = field(default=None, repr=False)  # the surfaces' bearer token


async def _call(ep: Endpoints, method: str, url: str, body: Any = None) -> Any:
    async with httpx.AsyncClient(timeout=10, headers=auth_headers(ep.token)) as http:
        r = await http.request(method, url, json=body)
    if r.status_code >= 400:
        raise ActionError(f"{method} {url} -> {r.status_code}: {r.text[:200]}")
    return r.json() if r.content and r.headers.get("content-type", "").startswith(
        "application/json") else None


def client_groups(names: list[str]) -> dict[str, dict[str, str]]:
    """The client groups a proxy API's proxy names reveal: `redis-workers-a` and
    `postgres-workers-a` make group `workers-a` (a run's proxies, loadtests/system.py); plain
    `redis` and `postgres` make `all` (toxiproxy's one proxy per store)."""
    groups: dict[str, dict[str, str]] = {}
    for name in names:
        for store in STORES:
            if name == store:
                groups.setdefault("all", {})[store] = name
            elif name.startswith(f"{store}-") and len(name) > len(store) + 1:
                groups.setdefault(name[len(store) + 1:], {})[store] = name
    return {g: p for g, p in groups.items() if set(p) == set(STORES)}


async def discover_proxies(ep: Endpoints) -> None:
    """Point `ep` at the client groups its proxy API has (a fault by hand during a run)."""
    listed = await _call(ep, "GET", f"{ep.proxy_api}/proxies") or {}
    names = list(listed) if isinstance(listed, dict) else [p["name"] for p in listed]
    found = client_groups(names)
    if found:
        ep.proxies = found


def proxy_names(ep: Endpoints, target: str, clients: list[str] | None = None) -> list[str]:
    """The proxies through which `clients` (client groups; None: every client) reach the
    store `target` (ActionError naming a bad target or group)."""
    if ep.proxy_api is None:
        raise ActionError("no fault proxy configured for network faults")
    if target not in STORES:
        raise ActionError(f"unknown network target {target!r} (redis or postgres)")
    if clients is not None and (not isinstance(clients, list) or not clients):
        raise ActionError(f"clients must be a non-empty list of client groups, got {clients!r}")
    unknown = [c for c in clients or [] if c not in ep.proxies]
    if unknown:
        raise ActionError(f"unknown client group {unknown[0]!r} (this run has: "
                          f"{', '.join(sorted(ep.proxies))})")
    return [ep.proxies[c][target] for c in (clients or sorted(ep.proxies))]


def _named(target: str, clients: list[str] | None, names: list[str]) -> dict[str, Any]:
    return {"target": target, **({"clients": clients} if clients else {}), "proxies": names}


# -- network faults -------------------------------------------------------------------------
async def partition(ep: Endpoints, target: str, mode: str = "hard",
                    clients: list[str] | None = None) -> dict[str, Any]:
    """hard: the proxy is disabled (refused and closed connections); blackhole: timeout 0 on
    both streams (open sockets that hang). `clients`: only those client groups lose the
    store; the others keep it."""
    if mode not in ("hard", "blackhole"):
        raise ActionError(f"partition mode must be hard or blackhole, got {mode!r}")
    names = proxy_names(ep, target, clients)
    for name in names:
        if mode == "hard":
            await _call(ep, "POST", f"{ep.proxy_api}/proxies/{name}", {"enabled": False})
            continue
        for stream in ("upstream", "downstream"):
            await _call(ep, "POST", f"{ep.proxy_api}/proxies/{name}/toxics",
                        {"name": f"blackhole_{stream}", "type": "timeout", "stream": stream,
                         "attributes": {"timeout": 0}})
    return {**_named(target, clients, names), "mode": mode}


async def toxic(ep: Endpoints, target: str, kind: str, attributes: dict[str, Any],
                stream: str = "downstream", toxicity: float = 1.0,
                clients: list[str] | None = None) -> dict[str, Any]:
    """Add a toxic (latency, bandwidth, reset_peer, ...) to a store's proxies (those of
    `clients` only, when given)."""
    names = proxy_names(ep, target, clients)
    spec = {"name": f"drill_{kind}_{stream}", "type": kind, "stream": stream,
            "toxicity": toxicity, "attributes": attributes}
    for name in names:
        await _call(ep, "POST", f"{ep.proxy_api}/proxies/{name}/toxics", spec)
    return {**_named(target, clients, names), "toxic": spec}


async def heal(ep: Endpoints, target: str | None = None,
               clients: list[str] | None = None) -> dict[str, Any]:
    """Enable the store's proxies (of `clients`, or all; every proxy with no target) and
    remove their toxics."""
    if ep.proxy_api is None:
        return {"healed": []}
    if target is None:
        await _call(ep, "POST", f"{ep.proxy_api}/reset")
        return {"healed": "all"}
    names = proxy_names(ep, target, clients)
    for name in names:
        for t in await _call(ep, "GET", f"{ep.proxy_api}/proxies/{name}/toxics") or []:
            await _call(ep, "DELETE", f"{ep.proxy_api}/proxies/{name}/toxics/{t['name']}")
        await _call(ep, "POST", f"{ep.proxy_api}/proxies/{name}", {"enabled": True})
    return {"healed": names}


# -- process faults -------------------------------------------------------------------------
def _need_control(ep: Endpoints) -> str:
    if ep.control_url is None:
        raise ActionError("no supervisor control surface for worker faults")
    return ep.control_url


def running_ids(workers: list[dict[str, Any]], *, unfaulted: bool) -> list[str]:
    """The running workers of a control surface's list, without those carrying a gradual
    fault when `unfaulted` (a kill or pause must not land on a worker already degrading: its
    failure would count as abrupt, and the predictor's labels would lie)."""
    return sorted(w["worker_id"] for w in workers if w["state"] == "running"
                  and not (unfaulted and w.get("fault")))


async def _running_workers(ep: Endpoints, group: str | None = None) -> list[str]:
    """Workers a kill, pause or new fault may land on: running, not already degrading (and in
    `group`, when given)."""
    workers = await _call(ep, "GET", f"{_need_control(ep)}/workers") or []
    if group is not None:
        groups = sorted({str(w.get("group")) for w in workers if w.get("group")})
        if group not in groups:
            raise ActionError(f"unknown worker group {group!r} (the supervisor has: "
                              f"{', '.join(groups) or 'none'})")
        workers = [w for w in workers if w.get("group") == group]
    return running_ids(workers, unfaulted=True)


def _choose(ids: list[str], count: int | None, fraction: float | None,
            rng: random.Random) -> list[str]:
    if (count is None) == (fraction is None):
        raise ActionError("give exactly one of count or fraction")
    n = count if count is not None else max(1, round((fraction or 0) * len(ids)))
    if not 1 <= n <= len(ids):
        raise ActionError(f"cannot choose {n} of {len(ids)} running workers")
    return rng.sample(ids, n)


async def kill_workers(ep: Endpoints, rng: random.Random, *, count: int | None = None,
                       fraction: float | None = None, group: str | None = None
                       ) -> dict[str, Any]:
    chosen = _choose(await _running_workers(ep, group), count, fraction, rng)
    for wid in chosen:
        await _call(ep, "POST", f"{_need_control(ep)}/workers/{wid}/kill")
    return {"killed": chosen}


async def pause_workers(ep: Endpoints, rng: random.Random, *, count: int | None = None,
                        fraction: float | None = None, group: str | None = None
                        ) -> dict[str, Any]:
    chosen = _choose(await _running_workers(ep, group), count, fraction, rng)
    for wid in chosen:
        await _call(ep, "POST", f"{_need_control(ep)}/workers/{wid}/pause")
    return {"paused": chosen}


async def degrade_workers(ep: Endpoints, rng: random.Random, *, count: int | None = None,
                          fraction: float | None = None, mode: str | list[str] = "mixed",
                          ramp_s: float | list[float] = 45.0, limit_mb: float = 400.0
                          ) -> dict[str, Any]:
    """Start a gradual fault (core.worker.faults) in chosen workers. `mode`: one mode, a list
    to draw from per worker, "mixed" (a fatal one: leak, slow or stall) or "benign" (one that
    ends without a failure); a [low, high] `ramp_s` draws each ramp from that range."""
    pool = fault_modes(mode)
    faults = []
    for wid in _choose(await _running_workers(ep), count, fraction, rng):
        ramp = rng.uniform(*ramp_s) if isinstance(ramp_s, list) else float(ramp_s)
        faults.append(await _inject(ep, wid, {
            "mode": rng.choice(pool), "ramp_s": round(ramp, 1), "limit_mb": limit_mb,
            "seed": rng.randrange(2**31)}))
    return {"degraded": faults}


async def _inject(ep: Endpoints, worker_id: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Start the fault `spec` in one worker through its supervisor; what the journal keeps,
    with the wall-clock time the worker was told (`injected_at`, epoch seconds: the onset the
    predictor's labels count a fatal fault's path to failure from)."""
    await _call(ep, "POST", f"{_need_control(ep)}/workers/{worker_id}/degrade", spec)
    return {"worker_id": worker_id, **spec, "injected_at": round(time.time(), 3)}


async def byzantine_workers(ep: Endpoints, rng: random.Random, *, count: int | None = None,
                            fraction: float | None = None, mode: str | list[str] = "forge",
                            capability: str = "gpu") -> dict[str, Any]:
    """Turn chosen workers Byzantine for the rest of their lives (core.worker.faults): `forge`
    (forged lease tokens), `idle` (leases dropped on the floor) or `liar` (takes jobs of
    `capability` it cannot serve); a list draws one per worker. They should be quarantined."""
    pool = tuple(mode) if isinstance(mode, list) else (mode,)
    if not pool or any(m not in BYZANTINE_MODES for m in pool):
        raise ActionError(f"byzantine mode must be one of {', '.join(BYZANTINE_MODES)} or a "
                          f"list of those, got {mode!r}")
    turned = []
    for wid in _choose(await _running_workers(ep), count, fraction, rng):
        turned.append(await _inject(ep, wid, {"mode": rng.choice(pool),
                                              "capability": capability}))
    return {"byzantine": turned}


def fault_modes(mode: str | list[str]) -> tuple[str, ...]:
    """The modes a degrade step draws from (ActionError naming a bad one)."""
    named = {"mixed": FATAL_MODES, "benign": BENIGN_MODES}
    pool = named.get(mode) if isinstance(mode, str) else None
    if pool is None:
        pool = tuple(mode) if isinstance(mode, list) else (mode,)
    bad = [m for m in pool if m not in MODES]
    if bad or not pool:
        raise ActionError(f"degrade mode must be mixed, benign, one of {', '.join(MODES)} or "
                          f"a list of those, got {mode!r}")
    return pool


async def resume_workers(ep: Endpoints, worker_ids: list[str] | None = None) -> dict[str, Any]:
    """Resume the given workers, or every paused (or abandoned) one."""
    workers = await _call(ep, "GET", f"{_need_control(ep)}/workers") or []
    targets = worker_ids or [w["worker_id"] for w in workers
                             if w["state"] in ("paused", "abandoned")]
    resumed = []
    for wid in targets:
        try:
            await _call(ep, "POST", f"{_need_control(ep)}/workers/{wid}/resume")
            resumed.append(wid)
        except ActionError:
            continue  # it exited meanwhile
    return {"resumed": resumed}


def signal_process(ep: Endpoints, name: str, sig: str) -> dict[str, Any]:
    """SIGKILL/SIGSTOP/SIGCONT a process this run started (e.g. the API, the memory owner)."""
    pid = (ep.pids or {}).get(name)
    if pid is None:
        raise ActionError(f"no process {name!r} to signal")
    signum = {"kill": signal.SIGKILL, "pause": signal.SIGSTOP, "resume": signal.SIGCONT,
              "terminate": signal.SIGTERM}[sig]
    try:
        os.kill(pid, signum)
    except ProcessLookupError as exc:
        raise ActionError(f"{name} (pid {pid}) is gone") from exc
    return {"process": name, "pid": pid, "signal": sig}


async def restart_process(ep: Endpoints, rng: random.Random, process: str,
                          down_s: float = 2.0) -> dict[str, Any]:
    """SIGKILL a process this run started and start it again after `down_s`, as a platform
    restarts a crashed container. `process` names one (`api-1`) or a family (`api`: one of
    its replicas, drawn from `rng`)."""
    if not 0 <= float(down_s) <= 120:
        raise ActionError(f"restart_process down_s must be between 0 and 120, got {down_s!r}")
    pids = ep.pids or {}
    family = sorted(k for k in pids if k.startswith(f"{process}-") and k[len(process) + 1:]
                    .isdigit())
    name = rng.choice(family) if family else process
    if name not in pids or ep.respawn is None:
        raise ActionError(f"no process {process!r} this run can restart "
                          f"(it has: {', '.join(sorted(pids)) or 'none'})")
    t0 = time.monotonic()
    old = pids[name]
    signal_process(ep, name, "kill")
    await asyncio.sleep(float(down_s))  # the outage lasts this long
    try:
        pid = await ep.respawn(name)
    except JobHarnessError as exc:
        raise ActionError(f"restart_process {name}: {exc}") from exc
    return {"process": name, "old_pid": old, "pid": pid, "down_s": round(time.monotonic() - t0, 2)}


# -- store restarts ------------------------------------------------------------------------
RESTART_MODES = {"postgres": PG_STOP_MODES, "redis": ("kill",)}
DEFAULT_RESTART_MODE = {"postgres": "immediate", "redis": "kill"}


async def restart_store(ep: Endpoints, target: str, mode: str | None = None,
                        down_s: float = 2.0) -> dict[str, Any]:
    """Stop a store and start it again after `down_s`. PostgreSQL: `immediate` (default: no
    checkpoint, crash recovery at start), `fast` (clients told: admin shutdown) or `kill`
    (SIGKILL of every PostgreSQL process, a host crash). Redis: `kill`, and it comes back
    empty (it keeps nothing on disk): the reconciler must rebuild the dispatch index.
    Only the embedded servers can be restarted from here; a staging store is restarted by its
    own tooling, with the drill's other faults run meanwhile."""
    modes = RESTART_MODES.get(target)
    if modes is None:
        raise ActionError(f"restart_store target must be postgres or redis, got {target!r}")
    mode = mode or DEFAULT_RESTART_MODE[target]
    if mode not in modes:
        raise ActionError(f"restart_store mode for {target} must be one of {', '.join(modes)}"
                          f", got {mode!r}")
    if not 0 <= float(down_s) <= 300:
        raise ActionError(f"restart_store down_s must be between 0 and 300, got {down_s!r}")
    services = ep.services
    if services is None:
        raise ActionError("restart_store needs the embedded servers (this run's stores were "
                          "given by DSN/URL: restart them with their own tooling)")
    t0 = time.monotonic()
    try:
        if target == "postgres":
            await asyncio.to_thread(services.stop_postgres, mode)
        else:
            await asyncio.to_thread(services.kill_redis)
        stopped_s = time.monotonic() - t0
        await asyncio.sleep(float(down_s))  # the outage lasts this long
        if target == "postgres":
            await asyncio.to_thread(services.start_postgres)
        else:
            await asyncio.to_thread(services.start_redis)
    except ServiceError as exc:
        raise ActionError(f"restart_store {target}: {exc}") from exc
    return {"target": target, "mode": mode, "stop_s": round(stopped_s, 2),
            "down_s": round(time.monotonic() - t0, 2)}


# -- the registry: every action a drill file (or `chaos fault`) may name ------------------------
Args = dict[str, Any]
Result = dict[str, Any]


@dataclass(frozen=True, kw_only=True)
class Action:
    """How to apply an action from its drill-file arguments, and how to undo it (None: it
    needs no undoing, or cannot be undone, like a kill). `timed_by_result`: the fault lasts as
    long as its result's `down_s` says (a restart), not its step's `duration_s`."""

    apply: Callable[[Endpoints, random.Random, Args], Awaitable[Result]]
    heal: Callable[[Endpoints, Args, Result], Awaitable[Result]] | None = None
    timed_by_result: bool = False


async def _signal(ep: Endpoints, rng: random.Random, a: Args) -> Result:
    return signal_process(ep, a["process"], a.get("signal", "kill"))


async def _unsignal(ep: Endpoints, a: Args, applied: Result) -> Result:
    if a.get("signal") != "pause":
        return {}
    return signal_process(ep, a["process"], "resume")


ACTIONS: dict[str, Action] = {
    "partition": Action(
        apply=lambda ep, rng, a: partition(ep, a["target"], a.get("mode", "hard"),
                                           a.get("clients")),
        heal=lambda ep, a, applied: heal(ep, a["target"], a.get("clients"))),
    "toxic": Action(
        apply=lambda ep, rng, a: toxic(ep, a["target"], a["type"], a.get("attributes", {}),
                                       a.get("stream", "downstream"),
                                       float(a.get("toxicity", 1.0)), a.get("clients")),
        heal=lambda ep, a, applied: heal(ep, a["target"], a.get("clients"))),
    "kill_workers": Action(
        apply=lambda ep, rng, a: kill_workers(ep, rng, count=a.get("count"),
                                              fraction=a.get("fraction"),
                                              group=a.get("group"))),
    "pause_workers": Action(
        apply=lambda ep, rng, a: pause_workers(ep, rng, count=a.get("count"),
                                               fraction=a.get("fraction"),
                                               group=a.get("group")),
        heal=lambda ep, a, applied: resume_workers(ep, applied.get("paused"))),
    "degrade_workers": Action(
        apply=lambda ep, rng, a: degrade_workers(
            ep, rng, count=a.get("count"), fraction=a.get("fraction"),
            mode=a.get("mode", "mixed"), ramp_s=a.get("ramp_s", 45.0),
            limit_mb=float(a.get("limit_mb", 400.0)))),
    "byzantine_workers": Action(apply=lambda ep, rng, a: byzantine_workers(
        ep, rng, count=a.get("count"), fraction=a.get("fraction"), mode=a.get("mode", "forge"),
        capability=a.get("capability", "gpu"))),
    "resume_workers": Action(apply=lambda ep, rng, a: resume_workers(ep)),
    "signal_process": Action(apply=_signal, heal=_unsignal),
    "restart_process": Action(
        apply=lambda ep, rng, a: restart_process(ep, rng, a["process"],
                                                 float(a.get("down_s", 2.0))),
        timed_by_result=True),
    "restart_store": Action(
        apply=lambda ep, rng, a: restart_store(ep, a["target"], a.get("mode"),
                                               float(a.get("down_s", 2.0))),
        timed_by_result=True),
}


def action_named(name: str) -> Action:
    """The action a drill file or the CLI names (`restart-store` and `restart_store` alike)."""
    action = ACTIONS.get(name.replace("-", "_"))
    if action is None:
        raise ActionError(f"unknown action {name!r} (known: {', '.join(sorted(ACTIONS))})")
    return action
