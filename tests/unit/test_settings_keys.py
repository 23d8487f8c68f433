from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
import yaml

from core.contract.keys import Keys
from core.errors import ConfigError
from core.settings import (
    AREAS,
    COMPOSITES,
    FIELDS,
    Settings,
    load_run_env,
    load_settings,
    run_env,
    to_env,
    with_values,
)
from core.store.queries import queries


def test_seed_key_names() -> None:
    k = Keys("gap006")
    assert k.priority_queues == (
        "gap006:high-priority-queue", "gap006:medium-priority-queue", "gap006:low-priority-queue")
    assert k.processing == "gap006:processing-queue"
    assert k.dead_letter == "gap006:dead-letter-queue"
    assert k.heartbeat("w-1") == "gap006:worker:w-1:heartbeat"
    assert k.queue_for(5) == k.queue_for(4) == k.high
    assert k.queue_for(1) == k.low


def test_bad_prefix_rejected() -> None:
    with pytest.raises(ValueError, match="prefix"):
        Keys("bad prefix with spaces")


def test_precedence_flags_over_env_over_file(tmp_path: Path) -> None:
    target = tmp_path / "target.yaml"
    target.write_text("schema: fromfile\nprefix: fromfile\nlease_s: 7\n"
                      "backoff: {base_s: 0.5, max_s: 9}\n")
    env = {"JOBHARNESS_PREFIX": "fromenv", "JOBHARNESS_LEASE_S": "8"}
    s = load_settings({"lease_s": 9.0}, target=target, environ=env)
    assert (s.schema, s.prefix, s.lease_s) == ("fromfile", "fromenv", 9.0)
    assert (s.backoff.base_s, s.backoff.max_s) == (0.5, 9.0)


def test_defaults_follow_the_seed() -> None:
    s = load_settings(environ={})
    assert (s.schema, s.prefix) == ("gap006", "gap006")
    assert (s.heartbeat_ttl_s, s.heartbeat_interval_s) == (60, 30)
    assert s.dlq_retention_days == 30


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"JOBHARNESS_SCHEMA": "Robert'); DROP"}, "schema"),
        ({"JOBHARNESS_LEASE_S": "soon"}, "lease_s"),
        ({"JOBHARNESS_LEASE_S": "-1"}, "lease_s"),
        ({"JOBHARNESS_HEARTBEAT_TTL_S": "10"}, "heartbeat_ttl_s"),
    ],
)
def test_bad_environment_is_named(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(environ=env)


def test_bad_target_file(tmp_path: Path) -> None:
    bad = tmp_path / "t.yaml"
    bad.write_text("schema: x\nnot_a_setting: 1\n")
    with pytest.raises(ConfigError, match="not_a_setting"):
        load_settings(target=bad, environ={})
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(target=tmp_path / "missing.yaml", environ={})


def test_every_named_query_is_non_empty() -> None:
    qs = queries()
    assert {"insert_jobs", "lease_jobs", "lease_runnable", "complete_jobs"} <= set(qs)
    assert all(sql.strip() for sql in qs.values())


# A value other than the default for every field: the round trips below must carry each.
NON_DEFAULT: dict[str, Any] = {
    "pg_dsn": "postgresql://u@127.0.0.1:5999/db", "redis_url": "redis://127.0.0.1:6999/3",
    "schema": "other_schema", "prefix": "other-prefix", "data_dir": Path("/tmp/jh-elsewhere"),
    "pg_max_connections": 77, "redis_timeout_s": 0.25, "redis_retry_after_s": 0.75,
    "pg_fallback": False, "reconcile": False, "lease_s": 3.5, "heartbeat_interval_s": 0.5,
    "heartbeat_ttl_s": 45.0, "health_sample_s": 0.25, "max_payload_bytes": 1234,
    "job_types": frozenset({"extra"}),
    "synthetic_handlers": True,
    "dlq_retention_days": 2.5, "api_url": "http://127.0.0.1:1/",
    "toxiproxy_url": "http://127.0.0.1:2/", "control_url": "http://127.0.0.1:3/",
    "api_token": "t0ken",
    "memory": False, "qdrant_url": "http://127.0.0.1:4/", "qdrant_api_key": "k3y",
    "memory_owner_url": "http://127.0.0.1:5/",
    "backoff": {"base_s": 0.1, "factor": 3.0, "max_s": 7.0, "jitter_s": 0.01},
    "memory_ttls": {"job_state_s": 11.0, "job_result_s": 12.0, "worker_state_s": 13.0,
                    "failure_s": 14.0},
}


def expected() -> Settings:
    return with_values(Settings(), NON_DEFAULT, "test")


def test_every_field_is_declared_once_in_an_area_and_in_the_table() -> None:
    names = {f.name for f in fields(Settings)}
    in_areas = [n for area in AREAS.values() for n in area]
    assert sorted(in_areas) == sorted(names)
    assert set(FIELDS) | set(COMPOSITES) == names
    assert set(NON_DEFAULT) == names
    defaults = Settings()
    s = expected()
    assert all(getattr(s, n) != getattr(defaults, n) for n in names)


def test_every_field_round_trips_through_the_environment() -> None:
    s = expected()
    env = to_env(s)
    assert load_settings(environ=env) == s
    for name in NON_DEFAULT:  # and each field alone, so one cannot hide behind another
        alone = with_values(Settings(), {name: NON_DEFAULT[name]}, "test")
        assert load_settings(environ=to_env(alone)) == alone, name


def test_target_files_drill_settings_and_flags_parse_alike(tmp_path: Path) -> None:
    target = tmp_path / "t.yaml"
    as_yaml = {k: (sorted(v) if isinstance(v, frozenset) else str(v) if isinstance(v, Path)
                   else v) for k, v in NON_DEFAULT.items()}
    target.write_text(yaml.safe_dump(as_yaml))
    from_file = load_settings(target=target, environ={})
    from_env_strings = load_settings(environ=to_env(expected()))
    from_flags = load_settings({k: v for k, v in NON_DEFAULT.items()
                                if k not in ("backoff", "memory_ttls")}, environ={})
    assert from_file == from_env_strings == expected()
    assert from_flags.lease_s == 3.5
    assert from_flags.job_types == expected().job_types


@pytest.mark.parametrize(("raw", "message"), [
    ({"lease_s": "soon"}, "lease_s"),
    ({"memory": "maybe"}, "memory"),
    ({"pg_max_connections": 1.5}, "pg_max_connections"),
    ({"backoff": {"base_s": "x"}}, "backoff"),
    ({"backoff": {"speed": 1}}, "speed"),
    ({"heartbeat_ttl_s": 1}, "heartbeat_ttl_s"),  # not above the interval (30 s)
    ({"no_such": 1}, "no_such"),
])
def test_drill_settings_are_parsed_and_refused_by_name(raw: dict[str, Any],
                                                        message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        with_values(Settings(), raw, "drill d.yaml")


def test_run_env_round_trips(tmp_path: Path) -> None:
    env = run_env(tmp_path / "s.yaml", tmp_path / "raw", 0)
    got = load_run_env(env)
    assert (got.scenario, got.raw_dir, got.job_budget) == (str(tmp_path / "s.yaml"),
                                                           tmp_path / "raw", 0)
    assert load_run_env({}).job_budget is None
    with pytest.raises(ConfigError, match="JOBHARNESS_JOB_BUDGET"):
        load_run_env({"JOBHARNESS_JOB_BUDGET": "many"})
