"""Every HTTP surface asks for the bearer token when one is set (`JOBHARNESS_API_TOKEN`): the
API (but /health), the supervisor's control surface, the memory owner and the fault proxy's
API, each a real process. Our own clients send it. Beyond loopback no surface listens without
a token unless told `--insecure`."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from core.contract import runfolder
from core.errors import ConfigError
from core.infra.auth import check_bind, is_loopback
from core.infra.embedded import free_port
from core.settings import Settings, to_env

TOKEN = "s3cret-token-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@contextlib.contextmanager
def process(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", *args], env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def answering(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while True:
        with contextlib.suppress(httpx.TransportError):
            httpx.get(url, timeout=1)
            return
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, f"{url} did not answer"
        time.sleep(0.05)  # polled: another process's readiness


def control_url(proc: subprocess.Popen[bytes], data_dir: Path, name: str, log: Path) -> str:
    """The control surface of the supervisor `proc` runs as `name`, once it listens."""
    state = runfolder.supervisor_state(data_dir, name)
    deadline = time.monotonic() + 60
    while not state.exists():
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline
        time.sleep(0.05)  # polled: the supervisor writes its state file when it listens
    return str(json.loads(state.read_text())["control_url"])


@pytest.fixture
def env(settings: Settings, tmp_path: Path) -> dict[str, str]:
    return {**os.environ, **to_env(replace(settings, data_dir=tmp_path, api_token=TOKEN))}


def test_the_api_asks_for_the_token_but_health(env: dict[str, str], tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "api.log"
    with process(["core.cli", "api", "--port", str(port), "--pool-size", "2"], env, log) as p:
        api = f"http://127.0.0.1:{port}"
        answering(f"{api}/health", p, log)
        assert httpx.get(f"{api}/health").status_code == 200  # open: load balancers probe it
        for method, path in (("GET", "/jobs"), ("POST", "/jobs"), ("GET", "/metrics"),
                             ("POST", "/dlq/purge"), ("GET", "/docs")):
            r = httpx.request(method, f"{api}{path}", json={})
            assert r.status_code == 401, (method, path, r.status_code)
            assert r.headers["www-authenticate"] == "Bearer"
            assert TOKEN not in r.text
        wrong = httpx.get(f"{api}/jobs", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        created = httpx.post(f"{api}/jobs", json={"job_type": "noop"}, headers=AUTH)
        assert created.status_code == 201, created.text
        assert httpx.get(f"{api}/jobs/{created.json()['job_id']}",
                         headers=AUTH).status_code == 200


def test_the_control_surface_and_the_memory_owner_ask_for_it(env: dict[str, str],
                                                            tmp_path: Path) -> None:
    log = tmp_path / "sup.log"
    with process(["core.cli", "supervisor", "--workers", "1", "--name", "auth"], env, log) as p:
        control = control_url(p, tmp_path, "auth", log)
        assert httpx.get(f"{control}/workers").status_code == 401
        assert httpx.post(f"{control}/kill", json={"count": 1}).status_code == 401
        assert httpx.get(f"{control}/workers", headers=AUTH).status_code == 200
        # the CLI sends the token it is configured with, and says so when it is missing
        ok = subprocess.run([sys.executable, "-m", "core.cli", "ctl", "stats", "--name", "auth"],
                            env=env, capture_output=True, text=True)
        assert ok.returncode == 0, ok.stderr
        no_token = {k: v for k, v in env.items() if k != "JOBHARNESS_API_TOKEN"}
        refused = subprocess.run([sys.executable, "-m", "core.cli", "ctl", "stats", "--name",
                                  "auth"], env=no_token, capture_output=True, text=True)
        assert refused.returncode != 0
        assert "unauthorized" in refused.stderr
    port = free_port()
    log = tmp_path / "owner.log"
    with process(["core.cli", "state", "serve", "--port", str(port)], env, log) as p:
        owner = f"http://127.0.0.1:{port}"
        answering(f"{owner}/stats", p, log)
        assert httpx.get(f"{owner}/stats").status_code == 401
        assert httpx.post(f"{owner}/snapshot", json={"path": str(tmp_path / "x")}
                          ).status_code == 401
        assert not (tmp_path / "x").exists()
        assert httpx.get(f"{owner}/stats", headers=AUTH).status_code == 200


def test_the_fault_proxy_asks_for_it(env: dict[str, str], tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "proxy.log"
    with process(["loadtests.cli", "chaos", "proxy", "--port", str(port)], env, log) as p:
        api = f"http://127.0.0.1:{port}"
        answering(f"{api}/version", p, log)
        r = httpx.post(f"{api}/proxies", json={"name": "x", "listen": "127.0.0.1:0",
                                               "upstream": "127.0.0.1:1"})
        assert r.status_code == 401
        assert httpx.get(f"{api}/proxies", headers=AUTH).json() == {}


def test_beyond_loopback_only_with_a_token_or_insecure(env: dict[str, str],
                                                      tmp_path: Path) -> None:
    assert is_loopback("127.0.0.1")
    assert is_loopback("::1")
    assert is_loopback("localhost")
    assert not is_loopback("0.0.0.0")
    assert not is_loopback("10.1.2.3")
    with pytest.raises(ConfigError, match=r"refusing to listen on 0\.0\.0\.0 without a token"):
        check_bind("0.0.0.0", None, insecure=False, surface="the API")
    check_bind("0.0.0.0", "t", insecure=False, surface="the API")
    check_bind("0.0.0.0", None, insecure=True, surface="the API")
    check_bind("127.0.0.1", None, insecure=False, surface="the API")
    no_token = {k: v for k, v in env.items() if k != "JOBHARNESS_API_TOKEN"}
    for args in (["core.cli", "api", "--host", "0.0.0.0", "--port", str(free_port())],
                 ["loadtests.cli", "chaos", "proxy", "--host", "0.0.0.0", "--port",
                  str(free_port())]):
        r = subprocess.run([sys.executable, "-m", *args], env=no_token, capture_output=True,
                           text=True, timeout=60)
        assert r.returncode != 0
        assert "refusing to listen on 0.0.0.0 without a token" in r.stderr
        assert "Traceback" not in r.stderr
