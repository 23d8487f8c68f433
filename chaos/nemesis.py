"""The random nemesis (Jepsen's name for it): a drill drawn from a seed instead of written by
hand, so interleavings nobody thought of get tried, and a failing seed replays exactly.

`jobharness run stress --drill random --seed S [--intensity low|high]` draws, from seed S, a
schedule of faults over every fault the harness can make today: worker kills, worker pauses
(zombies), hard and black-hole partitions of Redis, hard partitions of PostgreSQL, latency on
either store, restarts of either store (PostgreSQL fast, immediate or SIGKILL; Redis killed,
coming back empty), an API process killed and started again (one replica, with
`--api-replicas`), a Byzantine worker (forged lease tokens, or leases dropped while it
heartbeats), partial partitions (one client group, the API, the supervisor or half the
workers, cut from one store while the others keep it), and a clock offset for half the
workers (`workers-b`, 30 s to an hour either way, for the whole run). The run checks what
every run checks (nothing lost, nothing completed twice, leases and fencing tokens in order,
no replacement storm while a store was away) and measures each fault's recovery. The same
seed and intensity give the same schedule and, with the drill runner seeded from the same
seed, the same victims.

- `low`: 5 faults, one at a time, 6-14 s apart (after the previous one healed);
- `high`: 10 faults, starting 2-6 s apart, overlapping where their targets differ.

Three rules keep a verdict meaningful: a fault never starts on a target (workers, Redis,
PostgreSQL) that another fault still holds; worker pauses never overlap a store partition
or restart (plus a heartbeat TTL): a paused worker is rightly replaced for its stale
heartbeat, which would read as a replacement storm caused by the store; and a partial
partition holds both stores, so no client group ever loses both (a worker that reaches
neither store is indistinguishable from a dead one, and is rightly replaced).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from chaos.drill import Drill, DrillError, Step, load_drill

INTENSITIES = ("low", "high")
HEARTBEAT_TTL_S = 4.0
SETTINGS = {"heartbeat_interval_s": 1, "heartbeat_ttl_s": HEARTBEAT_TTL_S, "lease_s": 4,
            "redis_timeout_s": 0.5}
START_S = 5.0


@dataclass(frozen=True)
class Shape:
    faults: int
    gap_s: tuple[float, float]
    overlap: bool


SHAPES = {"low": Shape(5, (6.0, 14.0), overlap=False), "high": Shape(10, (2.0, 6.0), overlap=True)}

# (weight, kind): what the nemesis draws from, and how often
MENU = ((3, "kill"), (2, "pause"), (2, "partition-redis"), (1, "blackhole-redis"),
        (2, "partition-postgres"), (2, "latency-redis"), (2, "latency-postgres"),
        (1, "restart-postgres"), (1, "restart-redis"), (2, "cut-redis"), (2, "cut-postgres"),
        (1, "restart-api"), (1, "byzantine"))
CLIENT_GROUPS = ("api", "supervisor", "workers-a", "workers-b")  # loadtests.system's
SKEWED_GROUP = "workers-b"


def _draw(kind: str, rng: random.Random) -> tuple[str, dict[str, Any], float | None, float,
                                                  set[str]]:
    """One fault of `kind`: (action, args, duration_s, how long it holds its targets, the
    targets it holds; "storm" is held by faults a pause must not overlap)."""
    if kind == "kill":
        return "kill_workers", {"count": rng.randint(1, 2)}, None, 2.0, {"workers"}
    if kind == "pause":
        d = round(rng.uniform(4, 10), 1)
        return "pause_workers", {"count": rng.randint(1, 2)}, d, d + HEARTBEAT_TTL_S + 2, \
            {"workers", "storm"}
    if kind == "byzantine":  # a worker turns liar for good; it must end up quarantined
        mode = rng.choice(("forge", "idle"))
        return "byzantine_workers", {"count": 1, "mode": mode}, None, 2.0, {"workers"}
    if kind == "restart-api":  # one API process (a replica, with --api-replicas) restarted
        down = round(rng.uniform(1, 4), 1)
        return "restart_process", {"process": "api", "down_s": down}, None, down + 2, {"api"}
    store = kind.rsplit("-", 1)[1]
    if kind.startswith("cut"):  # a partial partition: one client group loses one store
        d = round(rng.uniform(3, 10), 1)
        mode = rng.choice(("hard", "blackhole")) if store == "redis" else "hard"
        args = {"target": store, "mode": mode, "clients": [rng.choice(CLIENT_GROUPS)]}
        return "partition", args, d, d + HEARTBEAT_TTL_S + 2, {"redis", "postgres", "storm"}
    if kind.startswith(("partition", "blackhole")):
        d = round(rng.uniform(3, 12) if store == "redis" else rng.uniform(2, 6), 1)
        mode = "blackhole" if kind.startswith("blackhole") else "hard"
        return "partition", {"target": store, "mode": mode}, d, d + HEARTBEAT_TTL_S + 2, \
            {store, "storm"}
    if kind.startswith("latency"):
        d = round(rng.uniform(4, 10), 1)
        ms = rng.choice((50, 100, 200, 400))
        return "toxic", {"target": store, "type": "latency",
                         "attributes": {"latency": ms, "jitter": ms // 5}}, d, d, {store}
    down = round(rng.uniform(1, 3), 1)
    mode = rng.choice(("fast", "immediate", "kill")) if store == "postgres" else "kill"
    return "restart_store", {"target": store, "mode": mode, "down_s": down}, None, \
        down + 8 + HEARTBEAT_TTL_S, {store, "storm"}


def random_drill(seed: int, intensity: str = "low") -> Drill:
    """The drill seed `seed` draws at `intensity` (ValueError naming a bad intensity)."""
    if intensity not in SHAPES:
        raise ValueError(f"intensity must be one of {', '.join(INTENSITIES)}, got {intensity!r}")
    shape = SHAPES[intensity]
    rng = random.Random(f"nemesis/{intensity}/{seed}")
    weights, kinds = zip(*MENU, strict=True)
    free_at: dict[str, float] = {}  # target -> when the fault holding it has healed
    cursor, steps = START_S, []
    for _ in range(shape.faults):
        action, args, duration, hold, targets = _draw(rng.choices(kinds, weights)[0], rng)
        at = cursor + (rng.uniform(*shape.gap_s) if steps else 0.0)
        at = round(max([at, *(free_at.get(t, 0.0) for t in targets)]), 1)
        steps.append(Step(action=action, at_s=at, args=args, duration_s=duration))
        for t in targets:  # a second apart: a heal and the next fault never race
            free_at[t] = at + hold + 1.0
        # one at a time: the next starts after everything healed; else after this one started
        cursor = max(free_at.values()) if not shape.overlap else at
    skew = rng.choice((-1, 1)) * round(rng.uniform(30, 3600))
    return Drill(
        name=f"random-{intensity}-{seed}",
        description=f"{shape.faults} faults drawn from seed {seed} ({intensity} intensity)",
        settings=dict(SETTINGS), clock_skew_s={SKEWED_GROUP: skew},
        steady_state=[{"probe": "api_healthy"},
                      {"probe": "workers_active_at_least", "fraction": 0.9}],
        method=steps, settle_s=120.0, expect_no_replacement_during=["redis", "postgres"],
        # no abort probe: the API rightly answers 503 on /health while PostgreSQL is away.
        # The nemesis judges the invariants; its SLOs are loose bounds only: ten overlapping
        # faults (stacked latency, a partition) build a backlog that takes a while to drain.
        slo={"error_rate_max": 0.6, "create_p99_ms": 15000, "e2e_p99_ms": 300_000})


def find_drill(name_or_path: str, *, seed: int = 1, intensity: str = "low") -> Drill:
    """A drill by name or file (chaos.drill.load_drill), or, for `random`, the one drawn from
    `seed` at `intensity` (DrillError naming a bad intensity)."""
    if name_or_path != "random":
        return load_drill(name_or_path)
    try:
        return random_drill(seed, intensity)
    except ValueError as exc:
        raise DrillError(str(exc)) from exc


def schedule(drill: Drill) -> list[str]:
    """The drill's faults, one line each, in the order they start (a clock offset first)."""
    lines = [f"{0.0:7.1f} s  clock of {group} {offset:+g} s (the whole run)"
             for group, offset in sorted(drill.clock_skew_s.items())]
    for s in sorted(drill.method, key=lambda s: s.at_s):
        args = ", ".join(f"{k}={v}" for k, v in s.args.items() if k != "attributes")
        if "attributes" in s.args:
            args += f", latency={s.args['attributes']['latency']} ms"
        lasting = f" for {s.duration_s:g} s" if s.duration_s else ""
        lines.append(f"{s.at_s:7.1f} s  {s.action} ({args}){lasting}")
    return lines
