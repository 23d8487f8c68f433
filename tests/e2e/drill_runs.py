"""Running a drill the way a user does (`jobharness run <scenario> --drill ...`) and reading
its run folder: shared by the e2e drill tests."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from core.settings import Settings
from loadtests.cli import main


def drill_run(server_settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str],
              drill: str, *extra: str, jobs: int = 450, scenario: str = "drill"
              ) -> tuple[int, dict[str, Any], Path]:
    assert server_settings.pg_dsn
    assert server_settings.redis_url
    code = main(["run", scenario, "--drill", drill, "--jobs", str(jobs), *extra, "--out",
                 str(tmp_path), "--json", "--pg-dsn", server_settings.pg_dsn, "--redis-url",
                 server_settings.redis_url])
    (folder,) = tmp_path.iterdir()
    return code, json.loads(capsys.readouterr().out), folder


def rows(folder: Path, name: str) -> list[dict[str, str]]:
    with open(folder / name, newline="") as fh:
        return list(csv.DictReader(fh))


def faults(verdict: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [j for j in verdict["drill"]["journal"] if j["kind"] == "fault" and j["name"] == name]
