"""The random nemesis (chaos/nemesis.py): a seed draws the same schedule every time, and every
schedule keeps the rules that make its verdict mean something."""

from __future__ import annotations

from pathlib import Path

import pytest

from chaos.actions import ACTIONS
from chaos.drill import DrillError, Step
from chaos.nemesis import HEARTBEAT_TTL_S, find_drill, random_drill, schedule


def window(s: Step) -> tuple[float, float]:
    lasting = s.duration_s or float(s.args.get("down_s", 0) or 0)
    return s.at_s, s.at_s + lasting


def target(s: Step) -> str:
    return str(s.args.get("target") or s.args.get("process") or "workers")


def overlap(a: tuple[float, float], b: tuple[float, float], margin: float = 0.0) -> bool:
    return a[0] < b[1] + margin and b[0] < a[1] + margin


def test_a_seed_draws_the_same_schedule_and_seeds_differ() -> None:
    assert random_drill(7, "high") == random_drill(7, "high")
    assert random_drill(7, "high").method != random_drill(8, "high").method
    assert random_drill(7, "low").method != random_drill(7, "high").method
    drill = find_drill("random", seed=7, intensity="high")
    assert drill.name == "random-high-7"
    clock, *lines = schedule(drill)
    skew = drill.clock_skew_s["workers-b"]
    assert clock == f"    0.0 s  clock of workers-b {skew:+g} s (the whole run)"
    assert 30 <= abs(drill.clock_skew_s["workers-b"]) <= 3600
    assert len(lines) == 10
    assert [float(line.split()[0]) for line in lines] == sorted(s.at_s for s in drill.method)


@pytest.mark.parametrize("seed", range(60))
def test_every_schedule_keeps_the_rules(seed: int) -> None:
    for intensity, faults in (("low", 5), ("high", 10)):
        drill = random_drill(seed, intensity)
        steps = sorted(drill.method, key=lambda s: s.at_s)
        assert len(steps) == faults
        assert all(s.action in ACTIONS for s in steps)
        assert drill.span_s < 400  # bounded: the run stops by itself
        for i, a in enumerate(steps):
            for b in steps[i + 1:]:
                wa, wb = window(a), window(b)
                if intensity == "low":
                    assert wa[1] <= wb[0], (a, b)  # one fault at a time
                if target(a) == target(b) and a.action != "kill_workers" != b.action:
                    assert not overlap(wa, wb), (a, b)
                if "clients" in a.args and b.action in ("partition", "restart_store", "toxic"):
                    # a partial partition holds both stores: no client group loses both
                    assert not overlap(wa, wb), (a, b)
                stores = {"partition", "restart_store"}
                if {a.action, b.action} == {"pause_workers"} | (stores & {a.action, b.action}) \
                        and len({a.action, b.action}) == 2:
                    # a paused worker's rightful replacement must not read as a storm
                    assert not overlap(wa, wb, HEARTBEAT_TTL_S), (a, b)


def test_the_menu_draws_partial_partitions_of_every_client_group() -> None:
    cuts = [(s.args["target"], s.args["clients"][0]) for seed in range(40)
            for s in random_drill(seed, "high").method if "clients" in s.args]
    assert {c for _, c in cuts} == {"api", "supervisor", "workers-a", "workers-b"}
    assert {t for t, _ in cuts} == {"redis", "postgres"}


def test_a_bad_intensity_is_refused_by_name() -> None:
    with pytest.raises(DrillError, match="intensity must be one of low, high"):
        find_drill("random", seed=1, intensity="mid")


def test_a_run_draws_its_random_drill_from_its_seed(tmp_path: Path) -> None:
    from core.settings import Settings
    from loadtests.run import Run, RunOptions

    settings = Settings(pg_dsn="postgresql://x@127.0.0.1:1/x", redis_url="redis://127.0.0.1:1/0")
    run = Run(settings, RunOptions(scenario="stress", drill="random", seed=5, intensity="high",
                                   out=tmp_path), lambda *a: None)
    assert run.drill == random_drill(5, "high")
    assert run.settings.lease_s == 4.0  # the drill's settings apply to the run
    assert run.scenario.slo.error_rate_max == 0.6
    # PostgreSQL faults make the API's /health answer 503, rightly: nothing aborts on it
    assert run.drill is not None
    assert run.drill.abort == []
