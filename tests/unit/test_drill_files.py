import asyncio
from pathlib import Path
from typing import Any

import pytest

from chaos.actions import Endpoints
from chaos.drill import DrillError, DrillRunner, ProbeResult, available, load_drill
from chaos.recovery import fault_windows, recovery


def test_every_shipped_drill_loads() -> None:
    names = set(available())
    assert {"kill-workers", "zombie-workers", "redis-partition", "postgres-latency",
            "postgres-partition", "state-memory-outage", "gameday"} <= names
    gameday = load_drill("gameday")
    assert {s.action for s in gameday.method} == {"kill_workers", "partition", "pause_workers"}
    assert gameday.length_s >= 70


def test_bad_drill_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmethod:\n  - {action: earthquake}\n")
    with pytest.raises(DrillError, match="action"):
        load_drill(str(bad))
    bad.write_text("name: x\nmethod:\n  - {action: kill_workers, repeat: 3, count: 1}\n")
    with pytest.raises(DrillError, match="every_s"):
        load_drill(str(bad))
    with pytest.raises(DrillError, match="unknown drill"):
        load_drill("no-such-drill")


def test_abort_probe_stops_the_method_and_rollbacks_still_run(tmp_path: Path) -> None:
    f = tmp_path / "d.yaml"
    f.write_text("name: d\nmethod:\n  - {action: resume_workers, at_s: 30}\n"
                 "abort:\n  - {probe: always_down}\n")
    calls: list[str] = []

    async def always_down(spec: dict[str, Any]) -> ProbeResult:
        calls.append("probe")
        return ProbeResult(False, "down", "up", "it is down")

    runner = DrillRunner(load_drill(str(f)), Endpoints(), {"always_down": always_down})
    asyncio.run(asyncio.wait_for(runner.run_method(), 5))  # well before the 30 s step
    assert runner.aborted is not None
    assert runner.aborted["probe"] == "always_down"
    kinds = [j["kind"] for j in runner.journal]
    assert kinds[0] == "abort"
    assert "fault" not in kinds
    assert [j["name"] for j in runner.journal if j["kind"] == "rollback"] == [
        "heal", "resume_workers"]


def test_recovery_from_samples() -> None:
    samples = []
    done = 0
    for t in range(30):
        rate = 0 if 10 <= t < 15 else 10
        done += rate
        samples.append({"elapsed_s": t, "COMPLETED": done, "DEAD": 0, "CANCELLED": 0,
                        "WAITING": 0, "PENDING": 50, "PROCESSING": 0})
    windows = fault_windows([{"kind": "fault", "name": "partition", "t_s": 10.0,
                              "duration_s": 5, "args": {}}], offset_s=0.0)
    (r,) = recovery(samples, windows)
    assert r["throughput_before_jobs_s"] == 10
    assert r["throughput_during_jobs_s"] <= 2
    assert r["recovery_s"] is not None
    assert 0 <= r["recovery_s"] <= 3


def test_worker_drills_load() -> None:
    drill = load_drill("degrading-workers")
    steps = {s.action: s for s in drill.method}
    assert steps["degrade_workers"].repeat * steps["degrade_workers"].args["count"] == 20
    assert steps["degrade_workers"].args["ramp_s"] == [25, 50]
    assert "kill_workers" in steps  # the abrupt failure, scored apart
    assert load_drill("no-faults").method == []


def test_harder_and_unseen_drills_draw_fatal_and_benign_faults() -> None:
    from chaos.actions import ActionError, fault_modes
    from core.worker.faults import BENIGN_MODES, FATAL_MODES

    harder = {s.action: s for s in load_drill("degrading-harder").method}["degrade_workers"]
    assert set(fault_modes(harder.args["mode"])) == set(FATAL_MODES) | set(BENIGN_MODES)
    unseen = {s.action: s for s in load_drill("degrading-unseen").method}["degrade_workers"]
    assert set(fault_modes(unseen.args["mode"])) & set(BENIGN_MODES)
    assert min(unseen.args["ramp_s"]) > max(harder.args["ramp_s"]) / 2  # slower than training
    assert fault_modes("mixed") == FATAL_MODES  # as before: every mixed fault is fatal
    assert fault_modes("benign") == BENIGN_MODES
    assert fault_modes("gc") == ("gc",)
    for bad in ("melt", ["leak", "melt"], []):
        with pytest.raises(ActionError, match="degrade mode must be mixed, benign"):
            fault_modes(bad)  # type: ignore[arg-type]


def test_fault_specs_name_what_is_wrong() -> None:
    from core.worker.faults import FaultSpec

    assert FaultSpec.from_dict({"mode": "leak", "ramp_s": 30}).limit_mb == 400
    for bad, words in (({"mode": "melt"}, "fault mode must be one of leak, slow, stall"),
                       ({"mode": "slow", "ramp_s": 1}, "ramp_s must be between 5 and 3600"),
                       ({"mode": "leak", "limit_mb": 10}, "limit_mb must be between"),
                       ({"ramp_s": 9}, "a fault needs a mode"),
                       ({"mode": "leak", "speed": 2}, "unknown fault fields: speed")):
        with pytest.raises(ValueError, match=words):
            FaultSpec.from_dict(bad)


def test_kills_and_pauses_never_pick_a_degrading_worker() -> None:
    from chaos.actions import running_ids

    workers = [{"worker_id": "w1", "state": "running", "fault": {"mode": "leak"}},
               {"worker_id": "w2", "state": "running", "fault": None},
               {"worker_id": "w3", "state": "paused", "fault": None},
               {"worker_id": "w4", "state": "running"}]
    assert running_ids(workers, unfaulted=True) == ["w2", "w4"]
    assert running_ids(workers, unfaulted=False) == ["w1", "w2", "w4"]
