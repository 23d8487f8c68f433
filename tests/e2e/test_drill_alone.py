"""`jobharness drill FILE --target T`: a drill alone against a running system (a real API and a
real supervisor with its workers, someone else's load), judged by the same runner and the same
pass rule as `run --drill`: lost jobs included, and a steady state that does not hold fails."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
import yaml

from core.contract import runfolder
from core.infra.embedded import free_port
from core.settings import Settings, to_env
from loadtests.cli import main

WORKERS = 3


def wait_for(check: object, what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)  # polled: other processes' state


@contextlib.contextmanager
def running_system(settings: Settings, logs: Path) -> Iterator[tuple[str, str]]:
    """(API URL, control URL) of an API process and a supervisor process."""
    env = {**os.environ, **to_env(settings)}
    port = free_port()
    procs = []
    with open(logs / "api.log", "wb") as a, open(logs / "sup.log", "wb") as s:
        procs.append(subprocess.Popen([sys.executable, "-m", "core.cli", "api", "--port",
                                       str(port), "--pool-size", "4"], env=env, stdout=a,
                                      stderr=subprocess.STDOUT))
        procs.append(subprocess.Popen([sys.executable, "-m", "core.cli", "supervisor",
                                       "--workers", str(WORKERS), "--name", "da",
                                       "--check-interval-s", "0.5", "--drain-timeout-s", "2"],
                                      env=env, stdout=s, stderr=subprocess.STDOUT))
    api = f"http://127.0.0.1:{port}"
    state = runfolder.supervisor_state(settings.data_dir, "da")
    try:
        def ready() -> bool:
            assert all(p.poll() is None for p in procs), (logs / "sup.log").read_text()
            try:
                workers = httpx.get(f"{api}/workers", params={"status": "ACTIVE"}).json()
            except httpx.HTTPError:
                return False
            return len(workers) == WORKERS and state.exists()

        wait_for(ready, "the API and every worker")
        yield api, json.loads(state.read_text())["control_url"]
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


def write_drill(path: Path, probe: dict[str, object], settle_s: float = 30) -> Path:
    path.write_text(yaml.safe_dump({
        "name": path.stem, "steady_state": [{"probe": "api_healthy"}, probe],
        "method": [{"action": "kill_workers", "at_s": 1, "count": 1}],
        "expect_no_replacement_during": [], "settle_s": settle_s}))
    return path


def test_a_drill_alone_judges_with_the_one_pass_rule(
        server_settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tag = f"da_{uuid.uuid4().hex[:8]}"
    settings = replace(server_settings, schema=tag, prefix=tag, data_dir=tmp_path / "state",
                       heartbeat_interval_s=1.0, heartbeat_ttl_s=4.0, lease_s=4.0)
    (tmp_path / "state").mkdir()
    with running_system(settings, tmp_path) as (api, control):
        jobs = [{"job_type": "sleep", "payload": {"ms": 50}} for _ in range(120)]
        r = httpx.post(f"{api}/jobs/batch", json={"jobs": jobs})
        assert r.status_code == 201, r.text
        target = tmp_path / "target.yaml"
        target.write_text(yaml.safe_dump({
            "pg_dsn": settings.pg_dsn, "redis_url": settings.redis_url, "schema": tag,
            "prefix": tag, "api_url": api, "control_url": control,
            "heartbeat_interval_s": 1.0, "heartbeat_ttl_s": 4.0, "lease_s": 4.0}))
        holds = write_drill(tmp_path / "holds.yaml",
                            {"probe": "workers_active_at_least", "count": WORKERS})
        code = main(["drill", str(holds), "--target", str(target), "--seed", "3", "--json"])
        result = json.loads(capsys.readouterr().out)
        checks = {c["name"]: c for c in result["invariants"]}
        assert code == 0, result
        assert result["passed"]
        assert checks["lost_jobs"]["ok"]  # judged, not skipped: the jobs all ended
        assert checks["completed_twice"]["ok"]
        assert checks["steady_state_after"]["ok"]  # the killed worker was replaced
        (fault,) = [j for j in result["journal"] if j["kind"] == "fault"]
        assert len(fault["result"]["killed"]) == 1
        # the same rule fails a drill whose steady state does not hold
        cannot = write_drill(tmp_path / "cannot.yaml",
                             {"probe": "workers_active_at_least", "count": WORKERS + 5},
                             settle_s=3)
        code = main(["drill", str(cannot), "--target", str(target), "--seed", "3", "--json"])
        result = json.loads(capsys.readouterr().out)
        assert code == 1
        assert not result["passed"]
        failed = {c["name"] for c in result["invariants"] if not c["ok"]}
        assert failed == {"steady_state_before", "steady_state_after"}
