"""Input that becomes a connection or a path is checked first, with one line that names the
field and never repeats a secret: a malformed DSN or URL, a scenario or drill name that would
leave the run folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from chaos.drill import DrillError, load_drill
from core.errors import ConfigError
from core.settings import load_settings
from loadtests.scenario import ScenarioError, load_scenario


@pytest.mark.parametrize(("env", "message"), [
    ({"JOBHARNESS_PG_DSN": "postgresql://u:hunter2@127.0.0.1:notaport/db"},
     "pg_dsn: port 'notaport' is not a number"),
    ({"JOBHARNESS_PG_DSN": "mysql://u:hunter2@h/db"}, "pg_dsn: must start with postgresql://"),
    ({"JOBHARNESS_REDIS_URL": "redis://:hunter2@h:x/0"}, "redis_url: port 'x' is not a number"),
    ({"JOBHARNESS_REDIS_URL": "http://h:6379"}, "redis_url: must start with redis://"),
])
def test_a_malformed_dsn_is_one_line_without_the_password(env: dict[str, str],
                                                          message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(environ=env)
    assert message in str(exc.value)
    assert "hunter2" not in str(exc.value)
    assert "\n" not in str(exc.value)


def test_good_dsns_pass_including_several_hosts() -> None:
    s = load_settings(environ={"JOBHARNESS_PG_DSN": "postgresql://u:p@h1:5432,h2:5433/db",
                               "JOBHARNESS_REDIS_URL": "rediss://[::1]:6380/0"})
    assert s.pg_dsn == "postgresql://u:p@h1:5432,h2:5433/db"


def test_scenario_and_drill_names_cannot_become_paths(tmp_path: Path) -> None:
    f = tmp_path / "s.yaml"
    for bad in ("../../etc/x", "a/b", ".hidden", ""):
        f.write_text(f"name: '{bad}'\n")
        with pytest.raises(ScenarioError, match="name must be"):
            load_scenario(str(f))
        f.write_text(f"name: '{bad}'\nmethod: []\n")
        with pytest.raises(DrillError, match="name must be"):
            load_drill(str(f))


def test_pgbench_gets_the_password_through_the_environment() -> None:
    from core.settings import split_password as without_password

    assert without_password("postgresql://u:p%40ss@h:5/db") == ("postgresql://u@h:5/db", "p@ss")
    assert without_password("postgresql://u@h/db") == ("postgresql://u@h/db", None)


def test_cpu_stops_burning_when_its_job_times_out() -> None:
    """The cpu handler runs in a thread the job timeout cannot kill: the cancellation sets a
    flag the thread checks, so a timed-out job stops using the worker's CPU."""
    import asyncio
    import time

    from core.worker.handlers import HandlerError, cpu

    async def timed_out() -> None:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(cpu({"ms": 5000}), 0.2)

    loop = asyncio.new_event_loop()  # not asyncio.run: it would wait for the thread to end
    try:
        loop.run_until_complete(timed_out())
        before = time.process_time()
        time.sleep(0.4)  # measuring this process's CPU use over a span, not awaiting an event
        assert time.process_time() - before < 0.15  # the 5 s burn did not go on
    finally:
        loop.close()
    for bad in (float("nan"), float("inf"), -1, 1e9, "lots"):
        with pytest.raises(HandlerError, match=r"cpu\.ms"):
            asyncio.run(cpu({"ms": bad}))


def test_the_token_goes_only_to_an_owner_on_this_machine_or_a_configured_one() -> None:
    """The memory owner's address is read from Redis, which is not trusted with the bearer
    token: followed only on loopback, unless the operator configured where the owner is."""
    from core.memory.events import owner_target

    assert owner_target("http://127.0.0.1:8070", None) == "http://127.0.0.1:8070"
    assert owner_target("http://localhost:8070/", None) == "http://localhost:8070"
    assert owner_target("http://10.9.8.7:8070", None) is None
    assert owner_target("http://evil.example:80", None) is None
    assert owner_target("file:///etc/passwd", None) is None
    assert owner_target(None, None) is None
    assert owner_target("http://10.9.8.7:8070", "http://memory-owner:8070/") == \
        "http://memory-owner:8070"


def test_synthetic_job_types_follow_the_stores_unless_told() -> None:
    from core.errors import InvalidInput
    from core.jobs.model import JobSpec, SpecLimits, validate_spec
    from core.settings import SYNTHETIC_JOB_TYPES, Settings
    from core.worker.handlers import build_registry

    given = {"pg_dsn": "postgresql://u@127.0.0.1:5/db", "redis_url": "redis://127.0.0.1:6/0"}
    assert Settings().synthetic_on  # embedded stores: a local run
    staging = Settings(**given)  # type: ignore[arg-type]
    assert not staging.synthetic_on
    assert staging.accepted_job_types == {"noop"}
    assert Settings(**given, synthetic_handlers=True).synthetic_on  # type: ignore[arg-type]
    assert not Settings(synthetic_handlers=False).synthetic_on
    assert set(build_registry(synthetic=False)) == {"noop"}
    assert set(build_registry()) >= SYNTHETIC_JOB_TYPES
    limits = SpecLimits(known_job_types=staging.accepted_job_types, max_payload_bytes=1024,
                        disabled_job_types=staging.job_types - staging.accepted_job_types)
    with pytest.raises(InvalidInput, match="synthetic handler, off") as exc:
        validate_spec(JobSpec(job_type="cpu"), limits)
    assert exc.value.field == "job_type"
    with pytest.raises(InvalidInput, match="unknown job type"):
        validate_spec(JobSpec(job_type="nope"), limits)


def test_a_targeted_run_refuses_synthetic_types_the_target_has_not_turned_on() -> None:
    from core.errors import JobHarnessError
    from core.settings import Settings
    from loadtests.run import Run

    given = {"pg_dsn": "postgresql://u@127.0.0.1:5/db", "redis_url": "redis://127.0.0.1:6/0"}
    demo = load_scenario("demo")
    assert set(demo.mix) - {"noop"}  # it submits synthetic types
    with pytest.raises(JobHarnessError, match="synthetic_handlers: true"):
        Run._check_target_runs(demo, Settings(**given))  # type: ignore[arg-type]
    Run._check_target_runs(demo, Settings(**given, synthetic_handlers=True))  # type: ignore[arg-type]
    Run._check_target_runs(load_scenario("demo", {"mix": {"noop": 1.0}}),
                           Settings(**given))  # type: ignore[arg-type]


def test_stopping_an_embedded_server_by_a_wrong_name_is_refused(tmp_path: Path) -> None:
    from core.infra.embedded import EmbeddedServices

    with pytest.raises(ValueError, match="no embedded server named redis"):
        EmbeddedServices(tmp_path).down({"redis"})
