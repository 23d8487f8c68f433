"""A drill's faults must fall on load: the load each window saw, the check that fails when a
window saw none, the refusal of a drill that would outlast a load shape, and probe results
that say what was expected and why they failed."""

from __future__ import annotations

import pytest

from chaos.drill import load_drill, probe_failures
from core.errors import JobHarnessError
from loadtests.run import Run
from loadtests.scenario import load_scenario
from loadtests.verdict import faults_under_load, window_load

T0 = 1_000_000.0  # wall clock of the run's second 0


def request(started_s: float, name: str = "POST /jobs", ok: bool = True,
            rt_ms: float = 200.0) -> dict[str, str]:
    """A raw row as the locustfile writes it: ts is when the request returned."""
    return {"ts": f"{T0 + started_s + rt_ms / 1000:.6f}", "name": name,
            "response_time_ms": f"{rt_ms}", "ok": "1" if ok else "0"}


def test_window_load_counts_requests_by_when_they_started() -> None:
    reqs = [request(2.5), request(3.2), request(5.0, ok=False), request(8.9, rt_ms=4000),
            request(4.0, name="GET /jobs/{id}"), request(4.0, name="POST /jobs/batch"),
            request(4.0, name="POST /jobs (from intended start)"), request(12.0)]
    windows = [{"name": "partition", "start_s": 3.0, "end_s": 9.0},
               {"name": "kill_workers", "start_s": 11.5, "end_s": 11.5},  # an instant
               {"name": "partition", "start_s": 20.0, "end_s": 26.0}]
    hard, kill, idle = window_load(reqs, windows, T0)
    # 3.2, 5.0 (failed), 8.9 (returned 4 s later, still started inside) and the batch
    assert hard == {"requests_during": 5, "creates_during": 4, "creates_failed_during": 1,
                    "creates_per_s_during": 0.7}
    assert kill["creates_during"] == 1  # an instant counts the second after it
    assert idle["creates_during"] == 0
    check = faults_under_load([{**w, **load} for w, load in
                               zip(windows, (hard, kill, idle), strict=True)])
    assert not check["ok"]
    assert check["violations"] == 1
    assert check["examples"] == ["partition 20-26 s: no create request"]


def test_a_drill_that_outlasts_a_load_shape_is_refused_before_anything_starts() -> None:
    spike = load_scenario("spike")  # its shape ends at 40 s
    with pytest.raises(JobHarnessError, match=r"ends its load at 40 s.*redis-partition"):
        Run._check_load_covers(spike, load_drill("redis-partition"))
    Run._check_load_covers(load_scenario("drill"), load_drill("redis-partition"))


def test_span_covers_faults_load_after_and_settle() -> None:
    d = load_drill("redis-partition")  # black hole 12-18 s
    assert d.length_s == 18
    assert d.span_s == 18 + d.load_after_s + d.settle_s
    assert load_drill("postgres-restart").length_s > 20  # a restart counts its down_s


def test_probe_failures_say_what_was_found_expected_and_why() -> None:
    results = [{"probe": "api_healthy", "ok": True, "found": "HTTP 200 ok",
                "expected": "HTTP 200", "why": ""},
               {"probe": "workers_active_at_least", "ok": False, "found": 4,
                "expected": ">= 6 ACTIVE (1 x 6, the fleet of the supervisor at X)",
                "why": "only 4 of 6 workers ACTIVE"}]
    assert probe_failures(results) == [
        "workers_active_at_least: found 4, expected >= 6 ACTIVE (1 x 6, the fleet of the "
        "supervisor at X) (only 4 of 6 workers ACTIVE)"]


def test_make_demo_runs_a_drill_that_kills_pauses_and_partitions_under_load() -> None:
    """The first thing a user sees shows the product: faults under load, in about a minute."""
    import re
    from pathlib import Path

    makefile = (Path(__file__).parents[2] / "Makefile").read_text()
    demo = re.search(r"^demo:.*\n\t(.+)$", makefile, re.MULTILINE)
    assert demo is not None
    args = demo.group(1).split()
    assert args[1:] == ["run", "demo", "--drill", "demo"]
    drill, scenario = load_drill("demo"), load_scenario("demo")
    actions = {(s.action, s.args.get("target")) for s in drill.method}
    assert actions == {("kill_workers", None), ("pause_workers", None), ("partition", "redis")}
    assert scenario.model == "open"  # a steady rate the 4 workers keep up with
    # the load covers the faults and their recovery, and the whole run stays short
    assert drill.length_s + drill.load_after_s <= 30
    Run._check_load_covers(scenario, drill)
