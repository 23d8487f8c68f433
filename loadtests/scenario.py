"""Scenarios: named, parameterised load definitions with their SLOs, one YAML file each in
`loadtests/scenarios/`. Pure (no Locust import): the orchestrator and the locustfile both
read them."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from core.settings import check_nice

SCENARIO_DIR = Path(__file__).parent / "scenarios"
MODELS = ("closed", "open")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class ScenarioError(ValueError):
    """A scenario file or override is invalid."""


@dataclass(frozen=True, kw_only=True)
class Slo:
    create_p99_ms: float = 1_000.0
    error_rate_max: float = 0.01
    e2e_p99_ms: float = 60_000.0
    # Lost and doubly completed jobs are not SLOs: they are invariants, and must be 0.


@dataclass(frozen=True, kw_only=True)
class Scenario:
    name: str
    description: str = ""
    jobs: int = 100
    workers: int = 4
    worker_concurrency: int = 1
    worker_nice: int = 0  # workers' niceness above the supervisor's (0..19)
    worker_prefetch: int = 0  # jobs each worker holds leased ahead of its free slots (0..1000)
    model: str = "closed"  # closed: Locust users; open: target arrival rate
    users: int = 10
    spawn_rate: float = 10.0
    rate_per_s: float = 50.0  # open model: creates per second, independent of responses
    max_in_flight: int = 200  # open model: requests outstanding before it counts a miss
    batch_fraction: float = 0.1
    batch_size: int = 10
    mix: dict[str, float] = field(default_factory=lambda: {"noop": 1.0})
    job_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    priorities: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])
    tenants: dict[str, float] = field(default_factory=dict)  # name -> share of jobs submitted
    # limits set on the system before the load starts (through its API): each a mapping of
    # scope (job_type | tenant), name, and any of max_running, rate_per_s, burst, weight
    limits: list[dict[str, Any]] = field(default_factory=list)
    payload_bytes: list[int] = field(default_factory=lambda: [64, 512])
    dag_fraction: float = 0.0
    max_retries: int = 3
    timeout_s: float = 30.0
    observers: int = 1
    operators: int = 0
    shape: dict[str, Any] | None = None
    max_load_s: float = 600.0
    drain_timeout_s: float = 120.0
    seed: int = 1
    slo: Slo = field(default_factory=Slo)

    def __post_init__(self) -> None:
        # the name becomes part of the run folder's name: a plain name, never a path
        _check(isinstance(self.name, str) and bool(NAME_RE.match(self.name)),
               "name must be 1-64 letters, digits, '.', '_' or '-', starting with a letter "
               "or digit (it names the run folder)")
        _check(self.jobs >= 1, "jobs must be >= 1")
        _check(1 <= self.workers <= 500, "workers must be 1..500")
        _check(self.model in MODELS, f"model must be one of {MODELS}")
        _check(isinstance(self.worker_prefetch, int) and 0 <= self.worker_prefetch <= 1000,
               "worker_prefetch must be 0..1000")
        try:
            check_nice(self.worker_nice, "worker_nice")
        except ValueError as exc:
            raise ScenarioError(str(exc)) from exc
        _check(self.users >= 1 and self.spawn_rate > 0, "users >= 1, spawn_rate > 0")
        _check(self.rate_per_s > 0, "rate_per_s must be > 0")
        _check(0 <= self.batch_fraction <= 1 and 0 <= self.dag_fraction <= 1,
               "fractions must be within 0..1")
        _check(1 <= self.batch_size <= 1000, "batch_size must be 1..1000")
        _check(bool(self.mix) and all(w >= 0 for w in self.mix.values())
               and sum(self.mix.values()) > 0, "mix needs positive weights")
        _check(all(1 <= p <= 5 for p in self.priorities) and bool(self.priorities),
               "priorities must be within 1..5")
        _check(all(isinstance(t, str) and 1 <= len(t) <= 200 and w > 0
                   for t, w in self.tenants.items()),
               "tenants maps names (1..200 characters) to positive weights")
        limit_keys = {"scope", "name", "max_running", "rate_per_s", "burst", "weight"}
        _check(all(isinstance(lim, dict) and set(lim) <= limit_keys
                   and lim.get("scope") in ("job_type", "tenant") and lim.get("name")
                   for lim in self.limits),
               "limits: each needs scope (job_type or tenant) and name, and may give "
               "max_running, rate_per_s, burst, weight")
        _check(len(self.payload_bytes) == 2 and 0 <= self.payload_bytes[0]
               <= self.payload_bytes[1], "payload_bytes is [min, max]")
        _check(self.max_load_s > 0 and self.drain_timeout_s > 0, "timeouts must be > 0")
        if self.shape is not None:
            _check(self.shape.get("type") in ("stages", "spike"),
                   "shape.type must be stages or spike")

    @property
    def shape_end_s(self) -> float | None:
        """When the load shape sends its users home (None: no shape, the load runs until
        its job budget is spent or its deadline)."""
        if self.shape is None:
            return None
        if self.shape["type"] == "spike":
            return float(self.shape["before_s"] + self.shape["spike_s"] + self.shape["after_s"])
        return float(max(stage["until_s"] for stage in self.shape["stages"]))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ScenarioError(message)


def available() -> list[str]:
    return sorted(p.stem for p in SCENARIO_DIR.glob("*.yaml"))


def load_scenario(name_or_path: str, overrides: dict[str, Any] | None = None) -> Scenario:
    """A scenario by name (`smoke`) or file path, with overrides (e.g. workers)."""
    path = Path(name_or_path)
    if not path.suffix:
        path = SCENARIO_DIR / f"{name_or_path}.yaml"
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ScenarioError(f"unknown scenario {name_or_path!r} (known: "
                            f"{', '.join(available())})") from exc
    except yaml.YAMLError as exc:
        raise ScenarioError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ScenarioError(f"{path}: must hold a mapping")
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    known = {f.name for f in fields(Scenario)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ScenarioError(f"{path}: unknown key(s) {', '.join(unknown)}")
    slo = data.pop("slo", {}) or {}
    slo_known = {f.name for f in fields(Slo)}
    if not isinstance(slo, dict) or set(slo) - slo_known:
        raise ScenarioError(f"{path}: slo keys must be among {', '.join(sorted(slo_known))}"
                            " (lost and doubly completed jobs are invariants, always 0)")
    try:
        return Scenario(**data, slo=Slo(**slo))
    except TypeError as exc:
        raise ScenarioError(f"{path}: {exc}") from exc
