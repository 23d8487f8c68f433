from pathlib import Path

import pytest

from core.contract.keys import Keys
from core.errors import ConfigError
from core.settings import load_settings
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
    assert (s.heartbeat_ttl_s, s.heartbeat_interval_s, s.default_max_retries) == (60, 30, 5)
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
    assert {"insert_jobs", "lease_jobs", "lease_runnable", "complete_job"} <= set(qs)
    assert all(sql.strip() for sql in qs.values())
