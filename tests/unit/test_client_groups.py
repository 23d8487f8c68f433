"""Pure logic of faults aimed at some processes: which proxies a fault names, how worker
groups are read and refused, and what a skewed clock shifts (and what it leaves alone)."""

from __future__ import annotations

import datetime
import time
from pathlib import Path

import pytest

from chaos.actions import ActionError, Endpoints, proxy_names
from chaos.drill import DrillError, load_drill
from core.supervisor.groups import GROUPS_ENV, group_of, parse_groups
from core.worker.clock import SKEW_ENV, install_skew, skew_from_env

RUN_PROXIES = {g: {"redis": f"redis-{g}", "postgres": f"postgres-{g}"}
               for g in ("api", "supervisor", "workers-a", "workers-b")}


def test_a_fault_names_the_proxies_of_its_clients_or_of_everyone() -> None:
    ep = Endpoints(proxy_api="http://127.0.0.1:1", proxies=RUN_PROXIES)
    assert proxy_names(ep, "redis", ["workers-a"]) == ["redis-workers-a"]
    assert proxy_names(ep, "postgres", ["api", "workers-b"]) == ["postgres-api",
                                                                 "postgres-workers-b"]
    assert sorted(proxy_names(ep, "redis")) == sorted(p["redis"] for p in RUN_PROXIES.values())
    staging = Endpoints(proxy_api="http://127.0.0.1:1")  # toxiproxy's one proxy per store
    assert proxy_names(staging, "postgres") == ["postgres"]


@pytest.mark.parametrize(("target", "clients", "says"), [
    ("redis", ["workers-c"], "unknown client group 'workers-c'"),
    ("redis", [], "non-empty list"),
    ("redis", "workers-a", "non-empty list"),
    ("qdrant", None, "unknown network target 'qdrant'"),
])
def test_a_fault_on_clients_that_do_not_exist_is_refused(target: str, clients: object,
                                                         says: str) -> None:
    ep = Endpoints(proxy_api="http://127.0.0.1:1", proxies=RUN_PROXIES)
    with pytest.raises(ActionError, match=says):
        proxy_names(ep, target, clients)  # type: ignore[arg-type]


def test_worker_groups_are_read_and_slots_take_turns() -> None:
    groups = parse_groups('[{"name": "workers-a", "env": {"JOBHARNESS_REDIS_URL": "redis://x"}},'
                          ' {"name": "workers-b", "env": {"JOBHARNESS_CLOCK_SKEW_S": "-90"}}]')
    assert [group_of(groups, i).name for i in range(4)] == ["workers-a", "workers-b"] * 2
    assert groups[1].clock_skew_s == -90
    assert groups[0].clock_skew_s == 0
    assert parse_groups("") == ()
    assert group_of((), 3) is None


@pytest.mark.parametrize(("text", "says"), [
    ("{", "not JSON"),
    ("[]", "list of 1-16 groups"),
    ('[{"name": "A"}]', "lower-case"),
    ('[{"name": "a"}, {"name": "a"}]', "given twice"),
    ('[{"name": "a", "env": {"JOBHARNESS_SCHEMA": "x"}}]', "not JOBHARNESS_SCHEMA"),
    ('[{"name": "a", "env": {"JOBHARNESS_CLOCK_SKEW_S": "soon"}}]', "number of seconds"),
    ('[{"name": "a", "env": {"JOBHARNESS_CLOCK_SKEW_S": "1e9"}}]', "within"),
    ('[{"name": "a", "port": 1}]', "a name and an env"),
])
def test_bad_worker_groups_are_refused_by_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_groups(text)
    assert GROUPS_ENV == "JOBHARNESS_WORKER_GROUPS"


def test_a_skewed_clock_shifts_the_time_of_day_and_no_interval() -> None:
    assert skew_from_env({}) == 0
    assert skew_from_env({SKEW_ENV: " 30 "}) == 30
    mono, wall = time.monotonic(), time.time()
    try:
        install_skew(3600)
        assert 3599 < time.time() - wall < 3610
        assert 3599e9 < time.time_ns() - wall * 1e9 < 3610e9
        now = datetime.datetime.now(datetime.UTC)
        assert 3599 < now.timestamp() - wall < 3610
        assert time.monotonic() - mono < 10  # timeouts and sleeps are untouched
        install_skew(-7200)
        assert -7210 < time.time() - wall < -7199
    finally:
        install_skew(0)
    assert abs(time.time() - wall) < 10
    assert datetime.datetime is not None
    assert abs(
        datetime.datetime.now(datetime.UTC).timestamp() - wall) < 10


def test_a_drill_skew_that_is_not_a_clock_offset_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "skew.yaml"
    bad.write_text("name: skew\nclock_skew_s: {workers-b: 1.0e12}\nmethod: []\n")
    with pytest.raises(DrillError, match=r"clock_skew_s\.workers-b"):
        load_drill(str(bad))
    good = tmp_path / "ok.yaml"
    good.write_text("name: ok\nclock_skew_s: {workers-b: -600}\nmethod: []\n")
    assert load_drill(str(good)).clock_skew_s == {"workers-b": -600}


async def test_restart_process_picks_a_replica_of_a_family_and_refuses_the_unknown() -> None:
    import random

    from chaos.actions import restart_process

    started: list[str] = []

    async def respawn(name: str) -> int:
        started.append(name)
        return 4242

    ep = Endpoints(pids={"memory-owner": 2**22 + 1}, respawn=respawn)
    with pytest.raises(ActionError, match="no process 'api' this run can restart"):
        await restart_process(ep, random.Random(1), "api", 0)
    with pytest.raises(ActionError, match="down_s must be between 0 and 120"):
        await restart_process(ep, random.Random(1), "memory-owner", 500)
    assert started == []  # refused before anything was killed


def test_a_fault_on_some_clients_is_labelled_with_them() -> None:
    from chaos.summary import fault_label
    from reports.build import fault_target

    cut = {"name": "partition", "args": {"target": "redis", "mode": "hard",
                                         "clients": ["workers-a"]}}
    assert fault_label(cut) == "partition redis@workers-a (hard)"
    assert fault_target(cut) == "redis of workers-a (hard)"
    whole = {"name": "partition", "args": {"target": "redis", "mode": "hard"}}
    assert fault_label(whole) == "partition redis (hard)"


def test_a_slot_dying_at_once_again_and_again_is_restarted_after_growing_pauses() -> None:
    from core.supervisor.crashloop import MAX_S, CrashLoop

    loop, t = CrashLoop(), 100.0
    assert not loop.hold(0, "w-g0", spawned_at=t - 1, now=t)  # the first quick death: at once
    waits = []
    for gen in range(1, 8):  # each successor dies a second after its start
        t += 1
        assert loop.hold(0, f"w-g{gen}", spawned_at=t - 1, now=t)
        held = 0.0
        while loop.hold(0, f"w-g{gen}", spawned_at=t - 1, now=t + held):
            held += 0.5
        waits.append(held)
    assert waits == [1.0, 2.0, 4.0, 8.0, 16.0, MAX_S, MAX_S]
    assert loop.backoffs == 7
    # a process that lived long resets the count; other slots are not affected
    assert not loop.hold(0, "w-g9", spawned_at=t - 60, now=t + 100)
    assert not loop.hold(0, "w-g10", spawned_at=t + 199, now=t + 200)
    assert not loop.hold(1, "x-g0", spawned_at=t, now=t + 1)


def test_client_groups_are_read_from_proxy_names() -> None:
    from chaos.actions import client_groups

    names = ["redis-api", "postgres-api", "redis-workers-a", "postgres-workers-a",
             "redis-lonely", "qdrant", "redis", "postgres", "redis-"]
    assert client_groups(names) == {
        "api": {"redis": "redis-api", "postgres": "postgres-api"},
        "workers-a": {"redis": "redis-workers-a", "postgres": "postgres-workers-a"},
        "all": {"redis": "redis", "postgres": "postgres"}}  # a group needs both stores
