"""Each shipped drill under steady load ends green with its faults really applied (the
journal and the observed effect agree), and a deliberately broken core fails a drill with
its lost jobs named. Real processes, a real fault proxy, real signals."""

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


def test_kill_workers(server_settings: Settings, tmp_path: Path,
                      capsys: pytest.CaptureFixture[str]) -> None:
    code, v, folder = drill_run(server_settings, tmp_path, capsys, "kill-workers")
    assert code == 0, v["breaches"]
    killed = [w for f in faults(v, "kill_workers") for w in f["result"]["killed"]]
    assert len(killed) == 4
    failed = {r["id"]: r["failure_reason"] for r in rows(folder, "workers.csv")
              if r["status"] == "FAILED"}
    assert {w: failed.get(w) for w in killed} == {w: "process killed by signal 9"
                                                 for w in killed}
    assert all(f["recovery_s"] is not None for f in v["drill"]["faults"])


def test_redis_partition_keeps_jobs_moving_through_postgres(
    server_settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, v, folder = drill_run(server_settings, tmp_path, capsys, "redis-partition")
    assert code == 0, v["breaches"]
    assert [f["args"]["mode"] for f in faults(v, "partition")] == ["hard", "blackhole"]
    via = {r["acquired_via"] for r in rows(folder, "executions.csv")}
    assert via == {"redis", "postgres"}  # the fallback really carried jobs
    hard = v["drill"]["faults"][0]
    assert hard["throughput_during_jobs_s"] > 0
    storm = next(c for c in v["invariants"] if c["name"] == "no_replacement_storm")
    assert storm["ok"]


def test_zombie_workers_are_replaced(server_settings: Settings, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    code, v, folder = drill_run(server_settings, tmp_path, capsys, "zombie-workers")
    assert code == 0, v["breaches"]
    (pause,) = faults(v, "pause_workers")
    reasons = {r["id"]: r["failure_reason"] for r in rows(folder, "workers.csv")}
    for wid in pause["result"]["paused"]:
        assert reasons[wid].startswith("heartbeat timed out")
    heals = [j for j in v["drill"]["journal"] if j["kind"] == "heal"]
    assert heals
    assert heals[0]["result"]["resumed"]


def test_postgres_partition_refuses_creates_and_loses_none(
    server_settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, v, _ = drill_run(server_settings, tmp_path, capsys, "postgres-partition")
    assert code == 0, v["breaches"]
    figs = v["figures"]
    assert figs["requests_failed"] > 0  # creates were refused while PostgreSQL was away
    (fault,) = v["drill"]["faults"]
    assert fault["creates_failed_during"] > 0  # the refusals fell in the partition
    # Every acknowledged job exists. A create whose commit succeeded while the partition cut
    # its acknowledgement is stored but was reported failed (the outcome idempotency keys
    # are for), so stored >= acknowledged.
    assert figs["jobs_acknowledged"] <= figs["jobs"]
    missing = next(c for c in v["invariants"] if c["name"] == "accepted_jobs_missing")
    assert missing["ok"]


def test_postgres_latency_and_state_memory_outage(
    server_settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, v, _ = drill_run(server_settings, tmp_path / "latency", capsys, "postgres-latency")
    assert code == 0, v["breaches"]
    assert v["figures"]["create_p99_ms"] >= 50  # every PostgreSQL reply was 50 ms late
    code, v, folder = drill_run(server_settings, tmp_path / "memory", capsys,
                                "state-memory-outage")
    assert code == 0, v["breaches"]
    (pause,) = faults(v, "signal_process")
    assert pause["result"]["signal"] == "pause"
    assert "memory owner at" in (folder / "logs" / "memory-owner.log").read_text()
    # the owner caught up: what waited in the stream while it was paused was applied, none
    # of it dropped
    owner = v["figures"]["memory_owner"]
    assert owner["caught_up"], owner
    assert owner["state"] == "up", owner
    assert owner["memory_written"] > 0
    assert owner.get("memory_dropped", 0) == 0, owner


def test_broken_core_fails_the_redis_partition_with_lost_jobs_named(
    server_settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken.yaml"
    drill = (Path(__file__).parents[2] / "chaos" / "drills" / "redis-partition.yaml")
    # No reconciler and no PostgreSQL fallback: jobs created while Redis is away are never
    # dispatched, and the checker must name them.
    text = drill.read_text().replace("redis_timeout_s: 0.5}", "redis_timeout_s: 0.5,"
                                     " reconcile: false, pg_fallback: false}")
    broken.write_text(text.replace("settle_s: 60", "settle_s: 5"))
    scenario = tmp_path / "short-drain.yaml"
    scenario.write_text((Path(__file__).parents[2] / "loadtests" / "scenarios" / "drill.yaml")
                        .read_text().replace("drain_timeout_s: 120", "drain_timeout_s: 10"))
    out = tmp_path / "runs"
    out.mkdir()
    code, v, _ = drill_run(server_settings, out, capsys, str(broken), scenario=str(scenario))
    lost = next(c for c in v["invariants"] if c["name"] == "lost_jobs")
    assert code == 1
    assert lost["violations"] > 0
    assert lost["examples"]
    assert "lost_jobs" in v["breaches"]


def test_partial_partitions_and_an_api_restart_hit_only_what_they_name(
    server_settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, v, folder = drill_run(server_settings, tmp_path, capsys, "partial-partitions",
                                "--api-replicas", "2")
    assert code == 0, v["breaches"]
    cuts = faults(v, "partition")
    assert [(f["args"]["target"], f["result"]["proxies"]) for f in cuts] == [
        ("redis", ["redis-workers-a"]), ("postgres", ["postgres-workers-b"]),
        ("postgres", ["postgres-api"])]
    workers = rows(folder, "workers.csv")
    assert not [w for w in workers if w["status"] == "FAILED"]  # nobody was replaced
    group_of = {w["id"]: int(w["id"].split("-")[-2]) % 2 for w in workers}
    execs = rows(folder, "executions.csv")
    # the half cut from Redis carried jobs through PostgreSQL, the other half through Redis
    assert {e["acquired_via"] for e in execs if group_of.get(e["worker_id"]) == 0} >= \
        {"postgres"}
    assert {e["acquired_via"] for e in execs if group_of.get(e["worker_id"]) == 1} >= {"redis"}
    api_cut, restart = v["drill"]["faults"][2:4]
    assert api_cut["creates_failed_during"] > 0  # the API refused what it could not commit
    assert api_cut["throughput_during_jobs_s"] > 0  # while the workers kept completing
    (restarted,) = [f["result"] for f in faults(v, "restart_process")]
    assert restarted["process"] in ("api-0", "api-1")
    assert restarted["pid"] != restarted["old_pid"]
    # while one replica was down, its users moved to the other and creates went on
    assert restart["creates_during"] > restart["creates_failed_during"]
    served = {r["replica"] for p in sorted((folder / "raw").glob("requests-*.csv"))
              for r in rows(p.parent, p.name) if r["ok"] == "1"}
    assert served >= {"0", "1"}  # both replicas carried load ("": a synthetic latency row)
