"""The staging path, as the README gives it: a deployment started separately (its own schema,
an API, a supervisor with 3 workers, the fault proxy in front of both stores), then
`jobharness run drill --target FILE --drill redis-partition` and `jobharness drill FILE
--target FILE` against it. The faults must fall on load, the probes must expect the
deployment's fleet (3, not the scenario's 6), and the verdict passes; with a job planted that
will never finish, the same run fails and names it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest
import yaml

from core.contract import runfolder
from core.infra.embedded import free_port
from core.settings import Settings, to_env
from loadtests.cli import main
from tests.e2e.test_drill_alone import wait_for

WORKERS = 3  # the scenario (`drill`) says 6: the probes must expect the deployment's 3
LIVENESS = {"heartbeat_interval_s": 1.0, "heartbeat_ttl_s": 4.0, "lease_s": 4.0}


def hostport(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port}"


def via(url: str, port: int) -> str:
    """`url` with its host:port replaced by the fault proxy's listener."""
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    auth = netloc[0] + "@" if len(netloc) == 2 else ""
    return parts._replace(netloc=f"{auth}127.0.0.1:{port}").geturl()


@contextlib.contextmanager
def deployment(settings: Settings, root: Path) -> Iterator[dict[str, Any]]:
    """Proxy, API and supervisor as processes of their own; yields the target file's keys."""
    assert settings.pg_dsn
    assert settings.redis_url
    direct = to_env(settings)
    subprocess.run([sys.executable, "-m", "core.cli", "db", "migrate"], check=True,
                   env={**os.environ, **direct}, capture_output=True)
    pg_port, redis_port, api_port, proxy_port = (free_port() for _ in range(4))
    (root / "proxies.json").write_text(json.dumps([
        {"name": "postgres", "listen": f"127.0.0.1:{pg_port}",
         "upstream": hostport(settings.pg_dsn), "enabled": True},
        {"name": "redis", "listen": f"127.0.0.1:{redis_port}",
         "upstream": hostport(settings.redis_url), "enabled": True}]))
    faulted = {**os.environ, **to_env(replace(settings, pg_dsn=via(settings.pg_dsn, pg_port),
                                             redis_url=via(settings.redis_url, redis_port)))}
    procs: list[subprocess.Popen[bytes]] = []
    logs = root / "logs"
    logs.mkdir()

    def start(name: str, args: list[str], env: dict[str, str]) -> None:
        with open(logs / f"{name}.log", "wb") as log:
            procs.append(subprocess.Popen([sys.executable, "-m", *args], env=env, stdout=log,
                                          stderr=subprocess.STDOUT))

    start("proxy", ["loadtests.cli", "chaos", "proxy", "--port", str(proxy_port), "--config",
                    str(root / "proxies.json")], {**os.environ})
    toxiproxy = f"http://127.0.0.1:{proxy_port}"

    def proxy_up() -> bool:
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(f"{toxiproxy}/proxies").status_code == 200
        return False

    wait_for(proxy_up, "the fault proxy")
    start("api", ["core.cli", "api", "--port", str(api_port), "--pool-size", "4"], faulted)
    start("supervisor", ["core.cli", "supervisor", "--workers", str(WORKERS), "--name", "stg",
                         "--check-interval-s", "0.5", "--drain-timeout-s", "2"], faulted)
    api = f"http://127.0.0.1:{api_port}"
    state = runfolder.supervisor_state(settings.data_dir, "stg")
    try:
        def ready() -> bool:
            assert all(p.poll() is None for p in procs), (logs / "supervisor.log").read_text()
            try:
                active = httpx.get(f"{api}/workers", params={"status": "ACTIVE"}).json()
            except httpx.HTTPError:
                return False
            return len(active) == WORKERS and state.exists()

        wait_for(ready, "the deployment's API and workers")
        yield {"pg_dsn": settings.pg_dsn, "redis_url": settings.redis_url,
               "schema": settings.schema, "prefix": settings.prefix, "api_url": api,
               "toxiproxy_url": toxiproxy,
               "control_url": json.loads(state.read_text())["control_url"],
               "synthetic_handlers": True, **LIVENESS}  # as the compose stack says
    finally:
        for p in procs[::-1]:
            p.send_signal(signal.SIGTERM)
        for p in procs[::-1]:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


async def plant_loss(dsn: str, schema: str, job_id: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"UPDATE {schema}.jobs SET status = 'PROCESSING', worker_id = "
                           "'ghost', lease_token = 1, lease_expires_at = now() + "
                           "interval '1 hour' WHERE id = $1", uuid.UUID(job_id))
    finally:
        await conn.close()


def test_staging_drills_fall_on_load_and_a_planted_loss_fails(
        server_settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tag = f"stg_{uuid.uuid4().hex[:8]}"
    settings = replace(server_settings, schema=tag, prefix=tag, data_dir=tmp_path / "state",
                       redis_timeout_s=0.5, **LIVENESS)
    (tmp_path / "state").mkdir()
    with deployment(settings, tmp_path) as keys:
        target = tmp_path / "target.yaml"
        target.write_text(yaml.safe_dump(keys))
        out = tmp_path / "runs"

        # 1. the README's example: the scenario's job count (150, 5 s at 30/s) is spent long
        # before the drill's black hole (12-18 s); the load goes on until the drill settles
        code = main(["run", "drill", "--target", str(target), "--drill", "redis-partition",
                     "--jobs", "150", "--out", str(out), "--json"])
        v = json.loads(capsys.readouterr().out)
        assert code == 0, v["breaches"]
        faults = v["drill"]["faults"]
        assert [f["args"]["mode"] for f in faults] == ["hard", "blackhole"]
        for f in faults:  # every window fell on load, at the scenario's rate (30/s)
            assert f["creates_during"] >= 0.5 * 30 * (f["end_s"] - f["start_s"]), f
        assert v["figures"]["jobs"] > 150  # the load outlived the job count
        checks = {c["name"]: c for c in v["invariants"]}
        assert checks["faults_under_load"]["ok"]
        assert checks["lost_jobs"]["ok"]
        fleet = next(r for r in v["drill"]["steady_before"]
                     if r["probe"] == "workers_active_at_least")
        assert fleet["found"] == WORKERS
        assert f">= {WORKERS} ACTIVE" in fleet["expected"]
        assert keys["control_url"] in fleet["expected"]  # from the deployment's supervisor

        # 2. a drill alone against the same deployment (someone else's load)
        r = httpx.post(f"{keys['api_url']}/jobs/batch",
                       json={"jobs": [{"job_type": "sleep", "payload": {"ms": 50}}] * 60})
        assert r.status_code == 201, r.text
        alone = tmp_path / "kill-one.yaml"
        alone.write_text(yaml.safe_dump({
            "name": "kill-one", "settle_s": 30, "expect_no_replacement_during": [],
            "steady_state": [{"probe": "api_healthy"},
                             {"probe": "workers_active_at_least", "fraction": 1.0}],
            "method": [{"action": "kill_workers", "at_s": 1, "count": 1}]}))
        code = main(["drill", str(alone), "--target", str(target), "--json"])
        d = json.loads(capsys.readouterr().out)
        assert code == 0, [c for c in d["invariants"] if not c["ok"]]
        (kill,) = d["faults"]
        assert kill["name"] == "kill_workers"

        # 3. a job that will never finish (PROCESSING under a lease held by no worker, for
        # an hour): the same run, with a short drill, fails and names it
        r = httpx.post(f"{keys['api_url']}/jobs", json={"job_type": "hang", "delay_s": 600})
        assert r.status_code == 201, r.text
        lost = r.json()["job_id"]
        asyncio.run(plant_loss(keys["pg_dsn"], tag, lost))
        short = tmp_path / "short.yaml"
        short.write_text(yaml.safe_dump({
            "name": "short", "settle_s": 10, "load_after_s": 2,
            "expect_no_replacement_during": ["redis"],
            "steady_state": [{"probe": "api_healthy"}],
            "method": [{"action": "partition", "at_s": 1, "duration_s": 2, "target": "redis",
                        "mode": "hard"}]}))
        scenario = tmp_path / "quick.yaml"
        scenario.write_text(yaml.safe_dump({
            "name": "quick", "jobs": 60, "workers": 6, "worker_concurrency": 2,
            "model": "open", "rate_per_s": 30, "mix": {"noop": 1}, "drain_timeout_s": 15,
            "max_load_s": 30}))
        code = main(["run", str(scenario), "--target", str(target), "--drill", str(short),
                     "--out", str(out)])
        printed = capsys.readouterr().out
        assert code == 1
        assert "FAILED" in printed
        assert "lost_jobs" in printed.split("FAILED", 1)[1]
        assert lost in printed  # the check table names the lost job
