"""The system under test of a local run, and its child processes: the fault proxy in front of
both stores (when a drill runs), the job API, the supervisor with its workers, and the
state-memory owner (when a drill takes it away). Each child writes its log into the run
folder; `stop` ends them all, newest first.

With the fault proxy, each client group reaches each store through a proxy of its own
(`redis-api`, `postgres-workers-a`, ...): the API (and the memory owner), the supervisor, and
the two halves of the workers (even slots `workers-a`, odd slots `workers-b`, groups.py). A
fault names the groups it hits (`clients: [workers-a]`) or, by default, hits them all, as one
proxy per store would. A drill may also run a worker group's clock off (`clock_skew_s`).

Against a target (staging) nothing is started: the target's API is driven and its stores
observed, and faults go to the target's toxiproxy and supervisor control surface."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from chaos.actions import Endpoints
from core.contract import runfolder
from core.contract.observe import ACTIVE_WORKERS
from core.errors import JobHarnessError, StoreUnavailable
from core.infra.auth import auth_headers
from core.infra.embedded import EmbeddedServices, free_port
from core.service.runtime import embedded_services
from core.settings import Settings, to_env
from core.supervisor.groups import GROUPS_ENV
from core.worker.clock import SKEW_ENV
from loadtests.procs import Child
from loadtests.scenario import Scenario

READY_TIMEOUT_S = 120.0
MAX_API_REPLICAS = 8
WORKER_GROUPS = ("workers-a", "workers-b")
CLIENT_GROUPS = ("api", "supervisor", *WORKER_GROUPS)


async def until_healthy(url: str, timeout_s: float, check: Callable[[], None]) -> bool:
    """True once `url`/health answers 200, False after `timeout_s`; `check` runs between tries
    (it raises when the process that should answer has died)."""
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient() as http:
        while True:
            with contextlib.suppress(httpx.TransportError):
                if (await http.get(f"{url}/health")).status_code == 200:
                    return True
            check()
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.1)  # polled: another process's readiness


def embedded_of(settings: Settings) -> EmbeddedServices | None:
    """The embedded servers, when both stores of these settings are theirs (a drill may then
    restart them)."""
    services = embedded_services(settings)
    if settings.pg_dsn == services.pg_url() and settings.redis_url == services.redis_url():
        return services
    return None


class SystemUnderTest:
    """The processes a local run starts, and where faults are applied to them."""

    def __init__(self, settings: Settings, scenario: Scenario, run_dir: Path, *,
                 targeted: bool, services: EmbeddedServices | None,
                 extra_supervisor_args: list[str] | None = None,
                 clock_skew_s: dict[str, float] | None = None, api_replicas: int = 1) -> None:
        if targeted and api_replicas != 1:
            raise JobHarnessError("--api-replicas applies to local runs: a target's API is "
                                  "its own (run several behind its load balancer)")
        if not 1 <= api_replicas <= MAX_API_REPLICAS:
            raise JobHarnessError(f"--api-replicas must be between 1 and {MAX_API_REPLICAS}, "
                                  f"got {api_replicas}")
        self.settings = settings  # what the harness itself uses (direct to the stores)
        # what each client group uses (through its proxies, if any)
        self.client_settings = dict.fromkeys(CLIENT_GROUPS, settings)
        self.clock_skew_s = clock_skew_s or {}
        self.api_replicas = api_replicas
        self.api_urls: list[str] = []  # the replicas' URLs, in order
        self._api_args: dict[str, list[str]] = {}  # replica name -> its command line
        self.scenario = scenario
        self.dir = run_dir
        self.targeted = targeted
        self.children: list[Child] = []
        self.endpoints = Endpoints(proxy_api=settings.toxiproxy_url,
                                   control_url=settings.control_url, token=settings.api_token,
                                   services=None if targeted else services)
        self.extra_supervisor_args = extra_supervisor_args or []

    @property
    def logs(self) -> Path:
        return self.dir / runfolder.LOGS

    async def start(self, *, with_proxy: bool, with_memory_owner: bool) -> str:
        """Start what the run needs; return the API URL to drive."""
        if self.targeted:
            if not self.settings.api_url:
                raise JobHarnessError("the target names no api_url to drive")
            return self.settings.api_url
        if with_proxy:
            await self._start_proxy()
        env = to_env(self.client_settings["api"])
        # each replica its own pool: together they keep the one API's connection budget
        pool = str(max(2, 10 // self.api_replicas))
        self.endpoints.pids = {}
        for i in range(self.api_replicas):
            name = f"api-{i}" if self.api_replicas > 1 else "api"
            port = free_port()
            self._api_args[name] = ["core.cli", "api", "--port", str(port), "--pool-size", pool]
            await self._start_api(name)
            self.api_urls.append(f"http://127.0.0.1:{port}")
        self.endpoints.respawn = self.respawn
        s = self.scenario
        self.children.append(await Child.start(
            "supervisor", ["core.cli", "supervisor", "--workers", str(s.workers),
                           "--concurrency", str(s.worker_concurrency), "--name", "run",
                           "--prefetch", str(s.worker_prefetch),
                           "--worker-nice", str(s.worker_nice),
                           "--max-replacements", str(max(20, s.workers // 2)),
                           *self.extra_supervisor_args],
            env=self._supervisor_env(), log=self.logs / "supervisor.log"))
        if with_memory_owner:
            owner = await Child.start("memory-owner", ["loadtests.cli", "state", "serve",
                                                        "--nice", "0"],
                                      env=env, log=self.logs / "memory-owner.log")
            self.children.append(owner)
            self.endpoints.pids["memory-owner"] = owner.proc.pid
        return self.api_urls[0]

    async def _start_api(self, name: str) -> Child:
        child = await Child.start(name, self._api_args[name],
                                  env=to_env(self.client_settings["api"]),
                                  log=self.logs / f"{name}.log")
        self.children.append(child)
        assert self.endpoints.pids is not None
        self.endpoints.pids[name] = child.proc.pid
        if name == "api-0":
            self.endpoints.pids["api"] = child.proc.pid  # what drills for one API name
        return child

    async def respawn(self, name: str) -> int:
        """Start an API replica again on its port once its process has exited (a restart
        by the platform); return the new pid once it answers /health."""
        if name not in self._api_args:
            raise JobHarnessError(f"no API replica {name!r} to restart "
                                  f"(this run has {', '.join(self._api_args)})")
        old = next(c for c in reversed(self.children) if c.name == name)
        await old.proc.wait()
        self.children.remove(old)
        child = await self._start_api(name)

        def alive() -> None:
            if not child.running:
                raise JobHarnessError(f"API replica {name} did not come back")

        if not await until_healthy(self.api_urls[list(self._api_args).index(name)], 30, alive):
            raise JobHarnessError(f"API replica {name} did not come back")
        return child.proc.pid

    def _supervisor_env(self) -> dict[str, str]:
        """The supervisor's own store URLs, and its workers' groups: their URLs and clocks."""
        groups = []
        for name in WORKER_GROUPS:
            own = to_env(self.client_settings[name])
            env = {k: own[k] for k in ("JOBHARNESS_PG_DSN", "JOBHARNESS_REDIS_URL") if k in own}
            if self.clock_skew_s.get(name):
                env[SKEW_ENV] = repr(float(self.clock_skew_s[name]))
            groups.append({"name": name, "env": env})
        return {**to_env(self.client_settings["supervisor"]), GROUPS_ENV: json.dumps(groups)}

    async def _start_proxy(self) -> None:
        """Every child reaches PostgreSQL and Redis through the fault proxy: each client group
        through proxies of its own."""
        port = free_port()
        self.children.append(await Child.start(
            "proxy", ["loadtests.cli", "chaos", "proxy", "--port", str(port)],
            env={"JOBHARNESS_API_TOKEN": self.settings.api_token} if self.settings.api_token
            else {}, log=self.logs / "proxy.log"))
        api = f"http://127.0.0.1:{port}"
        pg = urlsplit(self.settings.pg_dsn or "")
        rd = urlsplit(self.settings.redis_url or "")
        upstreams = {"postgres": f"{pg.hostname}:{pg.port}", "redis": f"{rd.hostname}:{rd.port}"}
        async with httpx.AsyncClient(headers=auth_headers(self.settings.api_token)) as http:
            deadline = time.monotonic() + 30
            while True:
                with contextlib.suppress(httpx.TransportError):
                    await http.get(f"{api}/version")
                    break
                if time.monotonic() > deadline:
                    raise JobHarnessError("the fault proxy did not start")
                await asyncio.sleep(0.05)  # polled: a process we cannot be told by
            proxies: dict[str, dict[str, str]] = {}
            for group in CLIENT_GROUPS:
                listen = {}
                for store, upstream in upstreams.items():
                    r = await http.post(f"{api}/proxies", json={
                        "name": f"{store}-{group}", "listen": "127.0.0.1:0",
                        "upstream": upstream})
                    listen[store] = r.json()["listen"]
                proxies[group] = {store: f"{store}-{group}" for store in upstreams}
                self.client_settings[group] = replace(
                    self.settings,
                    pg_dsn=urlunsplit(pg._replace(netloc=pg.netloc.replace(
                        upstreams["postgres"], listen["postgres"]))),
                    redis_url=urlunsplit(rd._replace(netloc=rd.netloc.replace(
                        upstreams["redis"], listen["redis"]))))
        self.endpoints.proxy_api = api
        self.endpoints.proxies = proxies

    async def wait_ready(self, api_url: str, pool: Any,
                         on_workers: Any = None) -> None:
        """Until the API answers /health and every worker is ACTIVE (and the supervisor's
        control surface is known); a child that exits meanwhile fails the run."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        if not await until_healthy(api_url, READY_TIMEOUT_S, self.check_children):
            raise JobHarnessError(f"the API did not become ready in {READY_TIMEOUT_S:.0f} s")
        if self.targeted:
            return
        control = runfolder.supervisor_state(self.dir / runfolder.STATE, "run")
        while True:
            try:
                n = int(await pool.fetchval(ACTIVE_WORKERS))
            except StoreUnavailable:
                n = 0
            if on_workers is not None:
                on_workers(n)
            if n >= self.scenario.workers and control.exists():
                self.endpoints.control_url = json.loads(control.read_text())["control_url"]
                return
            self.check_children()
            if time.monotonic() > deadline:
                raise JobHarnessError(f"only {n} of {self.scenario.workers} workers came up")
            await asyncio.sleep(0.2)  # polled: workers register in another process

    def check_children(self) -> None:
        for child in self.children:
            if not child.running and (child.name == "supervisor" or child.name in self._api_args):
                raise JobHarnessError(f"the {child.name} process exited (see {self.logs})")

    async def stop(self, timeout_s: float) -> None:
        for child in reversed(self.children):
            await child.stop(timeout_s=timeout_s)
