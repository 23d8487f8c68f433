"""Drills of several faults or of degraded stores end green with their faults really applied,
and a deliberately broken core fails a drill with its lost jobs named. Real processes, a real
fault proxy, real signals."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.settings import Settings
from tests.e2e.drill_runs import drill_run, faults, rows


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
