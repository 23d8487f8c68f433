"""The predictor in a real supervisor over real worker processes: a worker the model flags is
replaced before it fails (successor first, then a graceful drain), one it does not flag is
left alone, a held-out worker is only logged, and an unusable model leaves the supervisor
reactive-only."""

from __future__ import annotations

import argparse
import csv
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from core.cli.procs import load_predictor
from core.service.jobs import JobService
from core.settings import Settings
from core.supervisor.control import control_app
from core.supervisor.storm import StormLimits
from core.supervisor.supervisor import Supervisor
from core.worker.faults import FaultSpec
from predictor.features import FEATURES
from predictor.model import load, save
from predictor.policy import Policy
from predictor.serve import LivePredictor
from predictor.train import make_pipeline
from tests.conftest import wait_until
from tests.integration.test_processes import proc_settings, supervising, svc  # noqa: F401


@pytest.fixture
def tiny_model(tmp_path: Path) -> Path:
    """A model that knows one thing: memory growing by megabytes per second means failing.
    Every other feature is constant in its training rows, so nothing else can sway it."""
    rng = np.random.default_rng(1)
    slope = np.concatenate([rng.uniform(-0.5, 0.5, 300), rng.uniform(5, 200, 300)])
    df = pd.DataFrame({f: np.zeros(len(slope)) for f in FEATURES})
    df["rss_slope_mb_s"] = slope
    labels = np.where(slope > 2.5, "failing", "healthy")
    path = tmp_path / "tiny.skops"
    save(make_pipeline(max_iter=20).fit(df[list(FEATURES)], labels),
         {"threshold": 0.5, "k": 2}, path)
    return path


def predictor(model: Path, log: Path, holdout: float = 0.0) -> LivePredictor:
    return LivePredictor(load(model), Policy(threshold=0.5, k=2, holdout=holdout), log)


def leak(sup: Supervisor, worker_id: str) -> None:
    sup.inject_fault(worker_id, FaultSpec(mode="leak", ramp_s=60, limit_mb=3000))


def log_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def until(cond: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return cond()
    return check


async def test_a_flagged_worker_is_replaced_before_it_fails(
        svc: JobService, tiny_model: Path, tmp_path: Path) -> None:  # noqa: F811
    verdicts = tmp_path / "verdicts.csv"
    async with supervising(svc, predictor(tiny_model, verdicts), workers=2) as sup:
        sick, well = sup.slots[0], sup.slots[1]
        leak(sup, sick.worker_id)
        await wait_until(until(lambda: sup.stats["proactive_replacements"] == 1),
                         what="a proactive replacement")
        (event,) = sup.events
        assert event["old"] == sick.worker_id
        assert event["proactive"] is True
        assert event["reason"].startswith("predicted failing (p=")
        # the old worker drains and leaves by itself: exit code 0, deregistered as STOPPED
        assert await sick.proc.wait() == 0
        row = await svc.pool.fetchrow("SELECT status FROM workers WHERE id = $1",
                                      sick.worker_id)
        assert row["status"] == "STOPPED"
        assert sup.slots[0].generation == 1
        assert sup.slots[1] is well
        assert well.proc.returncode is None
        assert sup.stats["replacements"] == 0  # nothing died
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=control_app(sup)),
                                     base_url="http://control") as http:
            text = (await http.get("/metrics")).text
        assert 'jobharness_supervisor_events_total{event="proactive_replacements"} 1.0' in text
        assert 'jobharness_supervisor_workers{state="running"} 2.0' in text
    rows = log_rows(verdicts)
    scored = {r["worker_id"] for r in rows if r["verdict"]}
    assert {sick.worker_id, well.worker_id} <= scored
    assert [r["worker_id"] for r in rows if r["action"] == "replace"] == [sick.worker_id]
    assert all(r["verdict"] != "failing" for r in rows if r["worker_id"] == well.worker_id)


async def test_the_budget_and_the_breaker_hold_back_a_model_that_flags_everyone(
        svc: JobService, tiny_model: Path, tmp_path: Path) -> None:  # noqa: F811
    verdicts = tmp_path / "verdicts.csv"
    # a budget of one per hour; two held-back flags still alive after 0.5 s open the breaker
    storm = StormLimits(per_hour=1, window=2, min_false=2, horizon_s=0.5)
    async with supervising(svc, predictor(tiny_model, verdicts), workers=3,
                           storm=storm) as sup:
        for slot in list(sup.slots.values()):
            leak(sup, slot.worker_id)
        await wait_until(until(lambda: sup.stats["proactive_breaker"] >= 1),
                         what="the breaker holding a replacement back")
        assert sup.stats["proactive_replacements"] == 1  # the budget let one through
        assert sup.stats["proactive_budget"] >= 2
        assert sup.stats["proactive_judged_false"] >= 2
        assert sup.storm.open
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=control_app(sup)),
                                     base_url="http://control") as http:
            text = (await http.get("/metrics")).text
        assert "jobharness_supervisor_proactive_breaker_open 1.0" in text
        assert "jobharness_supervisor_proactive_budget_spent 1.0" in text
        assert 'jobharness_supervisor_events_total{event="proactive_breaker_trips"} 1.0' in text
    actions = {r["action"] for r in log_rows(verdicts)}
    assert {"replace", "budget", "breaker"} <= actions


async def test_a_fleet_that_looks_sick_at_once_is_not_replaced(
        svc: JobService, tiny_model: Path, tmp_path: Path) -> None:  # noqa: F811
    """Workers fail one by one; when most of a fleet scores failing in the same round the
    cause is shared (a busy host, a slow store), so proactive replacement holds back."""
    verdicts = tmp_path / "verdicts.csv"
    storm = StormLimits(per_hour=100, fleet_min=2, fleet_share=0.5)
    async with supervising(svc, predictor(tiny_model, verdicts), workers=3,
                           storm=storm) as sup:
        for slot in list(sup.slots.values()):
            leak(sup, slot.worker_id)
        await wait_until(until(lambda: sup.stats["proactive_fleetwide"] >= 2),
                         what="the fleet-wide hold holding firings back")
    rows = log_rows(verdicts)
    failing: dict[str, int] = {}
    for r in rows:
        if r["verdict"] == "failing":
            failing[r["t"]] = failing.get(r["t"], 0) + 1
    held = [r for r in rows if r["action"] == "fleetwide"]
    assert held
    # a held firing's round had two or more workers failing; a replacement's round fewer
    assert all(failing.get(r["t"], 0) >= 2 for r in held)
    assert all(failing.get(r["t"], 0) < 2 for r in rows if r["action"] == "replace")


def _names_splitting_holdout(policy: Policy) -> str:
    for i in range(1000):
        name = f"h{i}"
        if policy.held_out(f"{name}-000-g0") and not policy.held_out(f"{name}-001-g0"):
            return name
    raise AssertionError("no supervisor name splits the hold-out")


async def test_a_held_out_worker_is_scored_but_not_acted_on(
        svc: JobService, tiny_model: Path, tmp_path: Path) -> None:  # noqa: F811
    verdicts = tmp_path / "verdicts.csv"
    live = predictor(tiny_model, verdicts, holdout=0.5)
    name = _names_splitting_holdout(live.policy)
    async with supervising(svc, live, workers=2, name=name) as sup:
        kept, acted = sup.slots[0], sup.slots[1]
        leak(sup, kept.worker_id)
        leak(sup, acted.worker_id)
        await wait_until(until(lambda: sup.stats["proactive_replacements"] == 1),
                         what="a proactive replacement")
        await wait_until(until(lambda: sup.stats["predicted_held_out"] >= 2),
                         what="the held-out worker flagged")
        assert [e["old"] for e in sup.events] == [acted.worker_id]
        assert sup.stats["held_out_flagged"] == 1
        assert sup.slots[0] is kept
        assert kept.proc.returncode is None
    rows = log_rows(verdicts)
    assert any(r["worker_id"] == kept.worker_id and r["action"] == "holdout" for r in rows)
    assert not any(r["worker_id"] == kept.worker_id and r["action"] == "replace" for r in rows)


def test_an_unusable_model_leaves_the_supervisor_reactive(
        tmp_path: Path, tiny_model: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings(heartbeat_interval_s=1.0, heartbeat_ttl_s=4.0)
    bad = tmp_path / "bad.skops"
    bad.write_bytes(b"\x00" * 64)
    args = argparse.Namespace(model=str(bad), threshold=None, k=None, holdout=0.1,
                              verdict_log=None)
    assert load_predictor(args, settings) is None
    assert "predictor refused, running reactive-only" in caplog.text
    assert "not a readable skops file" in caplog.text
    # a model trained on 1 s samples, in a fleet sampling every 30 s: refused; the default
    # settings (heartbeats every 30 s, samples every 1 s) suit it
    loaded = load(tiny_model)
    save(loaded.pipeline, {**loaded.meta, "sampling_interval_s": 1.0}, tiny_model)
    args.model = str(tiny_model)
    assert load_predictor(args, Settings(health_sample_s=30.0)) is None
    assert "trained on health samples every 1 s; this fleet samples every 30 s" in caplog.text
    assert load_predictor(args, Settings()) is not None
    assert load_predictor(args, settings) is not None
    args.model = "off"
    assert load_predictor(args, settings) is None


@pytest.mark.parametrize(("mode", "reason"), [
    ("leak", "process killed by signal 9"),  # the memory limit's SIGKILL
    ("stall", "heartbeat timed out"),         # hung for good: no more heartbeats
])
async def test_gradual_faults_end_in_the_failure_they_model(
        svc: JobService, mode: str, reason: str) -> None:  # noqa: F811
    async with supervising(svc, workers=1) as sup:
        victim = sup.slots[0]
        # seed 1: the stall fault's first stall (0.47 s) comes 0.75 s in, the hang at 8 s
        sup.inject_fault(victim.worker_id,
                         FaultSpec(mode=mode, ramp_s=8, limit_mb=150, seed=1))
        with pytest.raises(LookupError, match="already has a"):
            sup.inject_fault(victim.worker_id, FaultSpec(mode="slow"))
        await wait_until(until(lambda: sup.stats["replacements"] == 1), timeout_s=30,
                         what=f"the {mode} fault's failure")
        (event,) = sup.events
        assert event["old"] == victim.worker_id
        assert event["reason"].startswith(reason)
        samples = await svc.pool.fetch(
            "SELECT rss_bytes, loop_lag_ms FROM worker_health_samples WHERE worker_id = $1"
            " ORDER BY sampled_at", victim.worker_id)
        if mode == "leak":  # the samples show the growth the predictor learns from
            assert samples[-1]["rss_bytes"] > samples[0]["rss_bytes"] + 50 * 2**20
        else:
            assert max(s["loop_lag_ms"] for s in samples) > 200


async def test_benign_faults_show_symptoms_and_end_without_a_failure(
        svc: JobService) -> None:  # noqa: F811
    from core.worker.faults import BENIGN_MODES

    async with supervising(svc, workers=len(BENIGN_MODES)) as sup:
        victims = dict(zip(BENIGN_MODES, list(sup.slots.values()), strict=True))
        for mode, slot in victims.items():
            sup.inject_fault(slot.worker_id, FaultSpec(mode=mode, ramp_s=5, limit_mb=150,
                                                       seed=1))

        def over() -> bool:
            return all(f"fault {mode}: over" in (sup.log_dir / f"{slot.worker_id}.log")
                       .read_text() for mode, slot in victims.items())

        await wait_until(until(over), timeout_s=30, what="every benign fault to end")
        assert sup.stats["replacements"] == 0
        assert all(slot.proc.returncode is None for slot in victims.values())
        peak = {mode: await svc.pool.fetchrow(
            "SELECT max(rss_bytes) - min(rss_bytes) AS grew, max(loop_lag_ms) AS lag,"
            " max(cpu_percent) AS cpu FROM worker_health_samples WHERE worker_id = $1",
            slot.worker_id) for mode, slot in victims.items()}
        assert peak["plateau"]["grew"] > 50 * 2**20  # memory grew and stayed: no kill
        assert peak["transient"]["lag"] > 100  # stalls, then none
        assert peak["gc"]["lag"] > 40  # 50-250 ms pauses
        assert peak["neighbour"]["cpu"] > 30  # a busy thread in the process


@pytest.mark.parametrize("policy", ["default", "learnt"])
async def test_the_shipped_policies_score_a_fleet_on_the_default_heartbeat(
        svc: JobService, tmp_path: Path, policy: str) -> None:  # noqa: F811
    """With the seed's 30 s heartbeat the workers still sample their health every second, so
    the shipped policy (and the learnt model kept beside it) loads and scores every worker
    from fresh samples."""
    from dataclasses import replace

    settings = replace(svc.settings, heartbeat_interval_s=30.0, heartbeat_ttl_s=60.0)
    assert settings.health_sample_s == Settings().health_sample_s == 1.0
    slow = JobService(svc.pool, svc.dispatch, settings)
    args = argparse.Namespace(model=policy, threshold=None, k=None, holdout=0.0,
                              verdict_log=str(tmp_path / "verdicts.csv"))
    live = load_predictor(args, settings)
    assert live is not None  # not refused: reactive-only would be None
    async with supervising(slow, live, workers=2) as sup:
        ids = [s.worker_id for s in sup.slots.values()]

        async def sampled() -> bool:
            now = await live.refresh(svc.pool, ids)
            return all(len(live.samples.get(w, ())) >= 5 for w in ids) and bool(now)

        await wait_until(sampled, timeout_s=30, what="five health samples per worker")
        beats = await svc.pool.fetchval(
            "SELECT max(extract(epoch FROM last_heartbeat_at - registered_at)) FROM workers "
            "WHERE id = ANY($1)", ids)
        assert beats < 30  # no second heartbeat yet: the samples did not come with them
        now = await live.refresh(svc.pool, ids)
        verdicts = live.score(now)
        assert sorted(v.worker_id for v in verdicts) == sorted(ids)
        assert sup.stats["predictor_errors"] == 0


async def test_the_hand_rule_is_served_as_a_model_is(
        svc: JobService, tmp_path: Path) -> None:  # noqa: F811
    """`--model hand-rule`: the baseline the card compares with, acting in a real supervisor
    (memory growing 50 MB/s is over its 3 MB/s)."""
    import json

    verdicts = tmp_path / "verdicts.csv"
    rule = LivePredictor.from_path("hand-rule", threshold=None, k=None, holdout=0.0,
                                   log_path=verdicts)
    async with supervising(svc, rule, workers=2) as sup:
        sick = sup.slots[0]
        leak(sup, sick.worker_id)
        await wait_until(until(lambda: sup.stats["proactive_replacements"] == 1),
                         what="a proactive replacement by the hand rule")
        (event,) = sup.events
        assert event["old"] == sick.worker_id
    meta = json.loads(verdicts.with_suffix(".json").read_text())
    assert (meta["model"], meta["threshold"], meta["k"]) == ("hand-rule", 0.5, 5)
