"""Worker groups: a supervisor's workers split into named groups, each started with its own
store URLs and clock, so a drill can cut some workers from Redis or PostgreSQL (their own
proxies) while the others, the API and the supervisor keep both, or run one group's clock
ahead of the rest.

Groups come from `JOBHARNESS_WORKER_GROUPS` (the environment, not argv: the URLs carry
passwords), a JSON list:

    [{"name": "workers-a", "env": {"JOBHARNESS_REDIS_URL": "redis://...:7001/0"}},
     {"name": "workers-b", "env": {"JOBHARNESS_CLOCK_SKEW_S": "3600"}}]

Slot i belongs to group i mod len(groups). Only the variables in `GROUP_ENV_KEYS` may differ
per group: everything else (schema, key prefix, token, timings) is the fleet's own.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from core.worker.clock import SKEW_ENV, skew_from_env

GROUPS_ENV = "JOBHARNESS_WORKER_GROUPS"
GROUP_ENV_KEYS = ("JOBHARNESS_PG_DSN", "JOBHARNESS_REDIS_URL", SKEW_ENV)
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")
MAX_GROUPS = 16


@dataclass(frozen=True)
class WorkerGroup:
    name: str
    env: Mapping[str, str] = field(default_factory=dict)

    @property
    def clock_skew_s(self) -> float:
        return skew_from_env(self.env)


def parse_groups(text: str | None) -> tuple[WorkerGroup, ...]:
    """The groups `text` (JSON) names; () for none (ValueError naming what is wrong)."""
    if not text or not text.strip():
        return ()
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{GROUPS_ENV} is not JSON: {exc}") from None
    if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_GROUPS:
        raise ValueError(f"{GROUPS_ENV} must be a list of 1-{MAX_GROUPS} groups")
    groups: list[WorkerGroup] = []
    for i, item in enumerate(raw):
        where = f"{GROUPS_ENV}[{i}]"
        if not isinstance(item, dict) or set(item) - {"name", "env"}:
            raise ValueError(f"{where} must be an object with a name and an env")
        name, env = item.get("name"), item.get("env") or {}
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(f"{where}.name must be 1-32 lower-case letters, digits or '-', "
                             f"got {name!r}")
        if name in {g.name for g in groups}:
            raise ValueError(f"{where}.name {name!r} is given twice")
        if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
            raise ValueError(f"{where}.env must map variable names to strings")
        unknown = sorted(set(env) - set(GROUP_ENV_KEYS))
        if unknown:
            raise ValueError(f"{where}.env may only set {', '.join(GROUP_ENV_KEYS)}; "
                             f"not {', '.join(unknown)}")
        skew_from_env(env)  # a bad skew is refused here, not in a worker that dies of it
        groups.append(WorkerGroup(name, dict(env)))
    return tuple(groups)


def group_of(groups: tuple[WorkerGroup, ...], index: int) -> WorkerGroup | None:
    """The group of slot `index`, or None when the fleet is not split."""
    return groups[index % len(groups)] if groups else None
