import random
from pathlib import Path

import pytest

from loadtests.jobmix import JobFactory
from loadtests.scenario import ScenarioError, available, load_scenario
from loadtests.verdict import evaluate, percentile


def test_every_shipped_scenario_loads() -> None:
    names = available()
    assert {"smoke", "load", "stress", "spike", "soak", "dag", "failure"} <= set(names)
    stress = load_scenario("stress")
    assert (stress.jobs, stress.workers, stress.model) == (10_000, 100, "open")
    assert load_scenario("load").jobs == 1000


def test_overrides_and_bad_files(tmp_path: Path) -> None:
    assert load_scenario("smoke", {"workers": 7, "jobs": None}).workers == 7
    with pytest.raises(ScenarioError, match="unknown scenario"):
        load_scenario("nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nworkers: 0\n")
    with pytest.raises(ScenarioError, match="workers"):
        load_scenario(str(bad))
    bad.write_text("name: x\nsurprise: 1\n")
    with pytest.raises(ScenarioError, match="surprise"):
        load_scenario(str(bad))
    bad.write_text("name: x\nslo: {nonsense: 1}\n")
    with pytest.raises(ScenarioError, match="slo"):
        load_scenario(str(bad))
    assert load_scenario("smoke", {"worker_prefetch": 8}).worker_prefetch == 8
    for value in (-1, 1001, 2.5):
        with pytest.raises(ScenarioError, match=r"worker_prefetch must be 0\.\.1000"):
            load_scenario("smoke", {"worker_prefetch": value})


def test_job_factory_respects_mix_budget_and_dags() -> None:
    s = load_scenario("dag")
    f = JobFactory(s, random.Random(3))
    kinds = {"single": 0, "batch": 0}
    for _ in range(300):
        path, body, n = f.next_request(budget_left=100)
        kinds["batch" if path.endswith("batch") else "single"] += 1
        jobs = body["jobs"] if path.endswith("batch") else [body]
        assert len(jobs) == n
        refs = {j.get("ref") for j in jobs}
        for j in jobs:
            assert j["job_type"] in s.mix
            assert 1 <= j["priority"] <= 5
            assert all(d in refs for d in j.get("depends_on", []))
    assert kinds["batch"] > kinds["single"]  # 70% of creates are DAGs
    path, body, n = f.next_request(budget_left=1)
    assert (path, n) == ("/jobs", 1)


def test_percentile_nearest_rank() -> None:
    assert percentile([], 99) is None
    assert percentile(list(range(1, 101)), 99) == 99
    assert percentile([5.0], 50) == 5.0


def test_verdict_names_each_breach() -> None:
    s = load_scenario("smoke")
    figs = {"create_p99_ms": s.slo.create_p99_ms + 1, "create_p99_from_intended_start_ms": None,
            "error_rate": 0.0, "e2e_p99_ms": 10.0, "jobs": s.jobs}
    checks = [{"name": "lost_jobs", "violations": 2, "ok": False},
              {"name": "completed_twice", "violations": 0, "ok": True}]
    v = evaluate(s, figs, checks)
    assert not v["passed"]
    # each check once, under one name: a lost job is an invariant breach, not also an SLO
    assert v["breaches"] == ["create_p99_ms", "lost_jobs"]
    names = [r["name"] for r in v["slos"]] + [c["name"] for c in v["invariants"]]
    assert len(names) == len(set(names))
    ok = evaluate(s, {**figs, "create_p99_ms": 1.0}, [{"name": "lost_jobs", "violations": 0,
                                                        "ok": True}])
    assert ok["passed"]
    assert ok["breaches"] == []


def test_lost_jobs_is_not_an_slo_a_scenario_can_relax(tmp_path: Path) -> None:
    f = tmp_path / "s.yaml"
    f.write_text("name: s\nslo: {lost_jobs_max: 5}\n")
    with pytest.raises(ScenarioError, match="invariants, always 0"):
        load_scenario(str(f))


def test_a_shape_ends_the_load_when_its_last_stage_does() -> None:
    assert load_scenario("spike").shape_end_s == 40.0
    assert load_scenario("smoke").shape_end_s is None


def test_tenants_are_drawn_by_weight_and_bad_ones_refused() -> None:
    from loadtests.scenario import Scenario

    s = Scenario(name="t", tenants={"flood": 10, "a": 1, "b": 1, "c": 1})
    factory = JobFactory(s, random.Random(7))
    drawn = [factory.job()["tenant"] for _ in range(13_000)]
    assert set(drawn) == {"flood", "a", "b", "c"}
    assert abs(drawn.count("flood") / len(drawn) - 10 / 13) < 0.02
    assert "tenant" not in JobFactory(Scenario(name="u"), random.Random(7)).job()
    for bad in ({"": 1}, {"x": 0}, {"x" * 201: 1}):
        with pytest.raises(ScenarioError, match="tenants maps names"):
            Scenario(name="t", tenants=bad)


def test_tenant_table_from_raw_queue_waits() -> None:
    import pandas as pd

    from reports.data import tenant_table

    jobs = pd.DataFrame({
        "tenant": ["flood"] * 4 + ["a", "a", None],
        "status": ["COMPLETED"] * 3 + ["PENDING", "COMPLETED", "COMPLETED", "COMPLETED"],
        "queue_wait_ms": [10.0, 20.0, 30.0, None, 5.0, 50.0, 1.0],
        # tenant a starts its last job at t=4: the contended window holds starts t <= 4
        "started_at": pd.to_datetime([1, 2, 3, None, 4, 0, 5], unit="s"),
    })
    rows = {r["tenant"]: r for r in tenant_table(jobs)}
    assert rows["flood"]["jobs"] == 4
    assert rows["flood"]["completed"] == 3
    assert rows["flood"]["share_of_completed"] == round(3 / 6, 4)
    # "(none)" started its only job at t=5; a's last start (t=4) ends the window: 5 starts
    assert rows["flood"]["share_contended"] == round(3 / 5, 4)
    assert rows["a"]["share_contended"] == round(2 / 5, 4)
    assert rows["(none)"]["share_contended"] == 0
    assert (rows["flood"]["queue_wait_p50_ms"], rows["flood"]["queue_wait_p99_ms"]) == (20, 30)
    assert (rows["a"]["queue_wait_p50_ms"], rows["a"]["queue_wait_p99_ms"]) == (5, 50)
    assert rows["(none)"]["completed"] == 1
    assert tenant_table(jobs.drop(columns=["tenant"])) == []
