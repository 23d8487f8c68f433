"""`bench limits` on the real servers: pgbench runs the core's statements for each step of a
job's life (each step feeding the next), the Redis acquire script is timed, and nothing is
left behind."""

from __future__ import annotations

import asyncpg
import pytest

from core.bench import with_limits
from core.bench_limits import bench_limits
from core.settings import Settings

pytestmark = pytest.mark.integration


async def test_limits_run_every_step_of_a_job_and_clean_up(server_settings: Settings) -> None:
    result = await bench_limits(server_settings, ops=200, concurrency=2)
    for step in ("insert", "lease", "complete"):
        assert result[step]["transactions"] == 200
        assert result[step]["tps"] > 0
    # every inserted job was leased and completed by the scripts: the statements really ran
    assert result["completed_rows"] == 200
    assert result["redis_acquire"]["calls"] == 200
    assert result["redis_acquire"]["ops_s"] > 0
    conn = await asyncpg.connect(server_settings.pg_dsn)
    try:
        left = await conn.fetchval(
            "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'bench\\_%'")
    finally:
        await conn.close()
    assert left == 0


def test_core_results_are_read_as_shares_of_the_limits() -> None:
    core = {"operations": {"create": {"throughput_ops_s": 500.0},
                           "acquire": {"throughput_ops_s": 300.0},
                           "complete": {"throughput_ops_s": 100.0}}}
    limits = {"insert": {"tps": 2000.0}, "lease": {"tps": 1500.0}, "complete": {"tps": 0.0}}
    out = with_limits(core, limits)
    assert out["ratio_to_limits"] == {"create": 0.25, "acquire": 0.2}  # no ratio to zero
    assert out["limits"] is limits
