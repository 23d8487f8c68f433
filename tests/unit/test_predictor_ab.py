"""The A/B's arithmetic on small hand-made run folders (pure file logic: no stores)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from predictor.ab import ABError, load_runs, run_ab, summarize, write
from predictor.policy import Policy

POLICY = Policy(threshold=0.9, k=5, holdout=0.5)


def ids(held_out: bool, n: int) -> list[str]:
    out, i = [], 0
    while len(out) < n:
        wid = f"run-{i:03d}-g0"
        if POLICY.held_out(wid) == held_out:
            out.append(wid)
        i += 1
    return out


def table(path: Path, rows: list[dict[str, object]]) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def make_run(root: Path, name: str, *, treated_abandoned: int, holdout_abandoned: int,
             holdout: float = 0.5) -> Path:
    """Two fatal workers per arm, one benign-faulted treated worker the policy fired on (a
    false drain), one killed hold-out worker; abandoned attempts as given."""
    d = root / name
    d.mkdir()
    t, h = ids(False, 3), ids(True, 3)
    (d / "predictions.json").write_text(json.dumps({"threshold": 0.9, "k": 5,
                                                     "holdout": holdout}))
    (d / "config.json").write_text(json.dumps({"scenario": {"seed": 7}}))
    degraded = [{"worker_id": w, "mode": "leak"} for w in (t[0], t[1], h[0], h[1])]
    degraded.append({"worker_id": t[2], "mode": "gc"})
    (d / "verdict.json").write_text(json.dumps({"drill": {"name": "degrading-harder",
        "journal": [{"result": {"degraded": degraded}}, {"result": {"killed": [h[2]]}}]}}))
    table(d / "workers.csv", [
        {"id": w, "registered_at": "2026-12-02 00:00:00+00", "stopped_at": "",
         "last_heartbeat_at": "2026-12-02 00:30:00+00"} for w in t + h])
    table(d / "predictions.csv", [
        {"t": 1.0, "worker_id": t[0], "verdict": "failing", "action": "fire"},
        {"t": 2.0, "worker_id": t[0], "verdict": "failing", "action": "fire"},
        {"t": 2.0, "worker_id": t[2], "verdict": "failing", "action": "fire"},
        {"t": 2.0, "worker_id": h[0], "verdict": "failing", "action": "holdout"},
        {"t": 2.0, "worker_id": h[1], "verdict": "healthy", "action": ""}])
    execs = ([{"worker_id": t[1], "status": "LEASE_EXPIRED"}] * treated_abandoned
             + [{"worker_id": h[0], "status": "LEASE_EXPIRED"}] * holdout_abandoned
             + [{"worker_id": h[2], "status": "LEASE_EXPIRED"}]
             + [{"worker_id": t[0], "status": "COMPLETED"}])
    table(d / "executions.csv", execs)
    return d


def test_one_run_splits_its_workers_by_the_policys_hash(tmp_path: Path) -> None:
    r = run_ab(make_run(tmp_path, "a", treated_abandoned=1, holdout_abandoned=4))
    t, h = r.arms["treated"], r.arms["holdout"]
    assert (t.workers, h.workers) == (3, 3)
    assert t.worker_hours == pytest.approx(1.5)
    assert (t.fatal, h.fatal) == (2, 2)
    assert (t.caught, t.false_drains, h.caught, h.false_drains) == (1, 1, 1, 0)
    assert (t.abandoned, h.abandoned, h.abandoned_abrupt) == (1, 4, 1)  # the kill apart
    assert t.executions == 2
    assert r.most_failing == 3  # the second round: two treated workers and one held out


def test_the_reduction_is_pooled_with_an_interval_over_runs(tmp_path: Path) -> None:
    runs = [run_ab(make_run(tmp_path, f"r{i}", treated_abandoned=i % 2, holdout_abandoned=4))
            for i in range(6)]
    s = summarize(runs)
    assert s["arms"]["treated"]["abandoned"] == 3
    assert s["arms"]["holdout"]["abandoned"] == 24
    assert s["reduction"] == pytest.approx(1 - (3 / 12) / (24 / 12), abs=1e-3)
    lo, hi = s["reduction_95"]
    assert 0.75 <= lo <= s["reduction"] <= hi <= 1.0
    assert s["jobs_saved"] == pytest.approx(24 / 12 * 12 - 3)
    written = write(runs, tmp_path / "out")
    assert written == s
    assert "fewer" in (tmp_path / "out" / "ab.md").read_text()
    assert len(json.loads((tmp_path / "out" / "ab.json").read_text())["runs"]) == 6


def test_committed_summaries_pool_with_new_run_folders(tmp_path: Path) -> None:
    old = [run_ab(make_run(tmp_path, f"r{i}", treated_abandoned=i % 2, holdout_abandoned=4))
           for i in range(4)]
    write(old, tmp_path / "before")
    new = make_run(tmp_path, "r9", treated_abandoned=0, holdout_abandoned=3)
    pooled = load_runs([tmp_path / "before" / "ab.json", new])
    assert [r.run for r in pooled] == ["r0", "r1", "r2", "r3", "r9"]
    assert pooled[:4] == old  # the summaries read back as they were written
    assert summarize(pooled)["arms"]["holdout"]["abandoned"] == 19
    with pytest.raises(ABError, match="runs given twice: r9"):
        load_runs([new, new])
    bad = tmp_path / "bad.json"
    bad.write_text('{"runs": [{"run": "x"}]}')
    with pytest.raises(ABError, match=r"not an ab\.json"):
        load_runs([bad])


def test_a_run_without_a_holdout_arm_is_refused_by_name(tmp_path: Path) -> None:
    d = make_run(tmp_path, "no-arm", treated_abandoned=0, holdout_abandoned=0, holdout=0.0)
    with pytest.raises(ABError, match="no-arm: hold-out share 0"):
        run_ab(d)
    (d / "predictions.json").unlink()
    with pytest.raises(ABError, match=r"no predictions\.json"):
        run_ab(d)


def test_the_exact_interval_stays_informative_when_the_treated_arm_counts_none() -> None:
    """0 abandoned over 30 treated fatal faults against 33 over 42: the bootstrap over runs
    would say [100 %, 100 %]; the exact interval says at least 83 % fewer."""
    from predictor.ab import exact_reduction_95

    lo, hi = exact_reduction_95(0, 30, 33, 42)  # type: ignore[misc]
    assert lo == pytest.approx(0.834, abs=0.002)
    assert hi == 1.0
    lo, hi = exact_reduction_95(10, 10, 10, 10)  # type: ignore[misc]
    assert lo < 0 < hi < 1  # no difference: the interval spans none
    assert exact_reduction_95(0, 0, 5, 5) is None
