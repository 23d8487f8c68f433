"""The load of a run: Locust, headless, against the job API, as one process or as a master with
N worker processes (each with its share of the job budget). Locust writes its CSV and HTML
report into the run folder; each process writes its raw requests and the ids the API accepted
into `raw/`, and a marker there once its budget is spent."""

from __future__ import annotations

import math
import signal
from pathlib import Path

from core.contract import runfolder
from core.infra.embedded import free_port
from core.settings import run_env
from loadtests.procs import Child
from loadtests.scenario import Scenario

LOCUSTFILE = Path(__file__).parent / "locustfile.py"


class Load:
    def __init__(self, scenario: Scenario, run_dir: Path, api_url: str, *,
                 locust_workers: int = 0, budget: int | None = None,
                 duration_s: float | None = None, token: str | None = None,
                 replicas: list[str] | None = None) -> None:
        """`budget` jobs (the scenario's by default) within `duration_s` (its max_load_s);
        with `replicas` (API URLs), users are dealt out over them (locustfile.py)."""
        self.scenario = scenario
        self.budget = scenario.jobs if budget is None else budget
        self.duration_s = scenario.max_load_s if duration_s is None else duration_s
        self.token = token
        self.dir = run_dir
        self.api_url = api_url
        self.locust_workers = locust_workers
        self.replicas = replicas or []
        self.children: list[Child] = []

    def _env(self, budget: int) -> dict[str, str]:
        env = run_env(self.dir / runfolder.SCENARIO, self.dir / runfolder.RAW, budget)
        if len(self.replicas) > 1:
            env["JOBHARNESS_API_URLS"] = ",".join(self.replicas)
        return {**env, "JOBHARNESS_API_TOKEN": self.token} if self.token else env

    async def start(self) -> list[Child]:
        s, n = self.scenario, self.locust_workers
        users = (s.users if s.model == "closed" else 1) + s.observers + s.operators
        common = ["-f", str(LOCUSTFILE), "--headless", "--host", self.api_url,
                  "-u", str(users), "-r", str(s.spawn_rate), "-t", f"{math.ceil(self.duration_s)}s",
                  "--csv", str(self.dir / runfolder.LOCUST_CSV),
                  "--html", str(self.dir / runfolder.LOCUST_HTML),
                  "--only-summary", "--stop-timeout", "5"]
        logs = self.dir / runfolder.LOGS
        if n <= 0:
            self.children = [await Child.start("locust", ["locust", *common],
                                               env=self._env(self.budget),
                                               log=logs / "locust.log", cwd=self.dir)]
            return self.children
        port = free_port()
        master = await Child.start(
            "locust", ["locust", *common, "--master", "--expect-workers", str(n),
                       "--master-bind-host", "127.0.0.1", "--master-bind-port", str(port)],
            env=self._env(0), log=logs / "locust-master.log", cwd=self.dir)
        budget = math.ceil(self.budget / n)
        workers = [await Child.start(
            f"locust-worker-{i}", ["locust", "-f", str(LOCUSTFILE), "--worker",
                                   "--master-host", "127.0.0.1", "--master-port", str(port)],
            env=self._env(budget), log=logs / f"locust-worker-{i}.log", cwd=self.dir)
            for i in range(n)]
        self.children = [master, *workers]
        return self.children

    @property
    def running(self) -> bool:
        return bool(self.children) and self.children[0].running

    def budget_spent(self) -> bool:
        """Every process that creates jobs has spent its budget."""
        producers = max(1, len(self.children) - 1) if len(self.children) > 1 else 1
        return len(list((self.dir / runfolder.RAW).glob("budget-spent-*"))) >= producers

    async def stop(self) -> None:
        # SIGINT, not SIGTERM: only then does Locust write its HTML report
        for child in self.children:
            await child.stop(timeout_s=30, sig=signal.SIGINT)
