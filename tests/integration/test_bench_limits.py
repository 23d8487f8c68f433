"""`bench limits` on the real servers: pgbench runs the core's statements for each step of a
job's life (each step feeding the next), the Redis acquire script is timed, and nothing is
left behind."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from core.settings import Settings
from loadtests.bench.core import with_limits
from loadtests.bench.limits import bench_limits
from tests.conftest import private_valkey


async def test_limits_run_every_step_of_a_job_and_clean_up(server_settings: Settings) -> None:
    result = await bench_limits(server_settings, ops=200, concurrency=2)
    for step in ("insert", "lease", "complete"):
        assert result[step]["transactions"] == 200
        assert result[step]["tps"] > 0
    # every inserted job was leased and completed by the scripts: the statements really ran
    assert result["completed_rows"] == 200
    assert result["insert_batch"]["rows_per_transaction"] == 1000
    assert result["insert_batch"]["rows_s"] == pytest.approx(result["insert_batch"]["tps"] * 1000)
    assert result["insert_batch"]["rows_s"] > 0
    assert result["redis_acquire"]["calls"] == 200
    assert result["redis_acquire"]["ops_s"] > 0
    conn = await asyncpg.connect(server_settings.pg_dsn)
    try:
        left = await conn.fetchval(  # this process's scratch schema (others may run)
            "SELECT count(*) FROM pg_namespace WHERE nspname = $1", f"bench_{os.getpid()}")
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


async def test_e2e_bench_runs_every_job_through_worker_processes(
        server_settings: Settings) -> None:
    from loadtests.bench.procs import bench_e2e

    t0 = time.monotonic()
    result = await bench_e2e(server_settings, jobs=120, workers=2, concurrency=2, batch=50,
                             worker_nice=5)
    called_s = time.monotonic() - t0
    assert result["completed"] == 120  # counted in PostgreSQL at the end
    assert result["worker_nice"] == 5
    # measured from outside: the bench's wall time lies within this call, so its throughput
    # cannot be below 120 jobs over the whole call
    assert 0 < result["wall_s"] <= called_s
    assert result["throughput_jobs_s"] >= 120 / called_s
    e2e = result["end_to_end_ms"]
    assert 0 < e2e["p50"] <= e2e["p99"] <= e2e["p99.9"]


def test_the_per_job_ceiling_combines_the_three_statements() -> None:
    from loadtests.bench.procs import e2e_with_limits

    limits = {"insert": {"tps": 3000.0}, "lease": {"tps": 3000.0}, "complete": {"tps": 3000.0}}
    out = e2e_with_limits({"throughput_jobs_s": 500.0}, limits)
    assert out["limit_jobs_s"] == 1000.0  # three statements of 1/3000 s each per job
    assert out["ratio_to_limits"] == 0.5


async def test_api_bench_drives_every_request_into_a_stored_job(
        server_settings: Settings) -> None:
    from loadtests.bench.procs import bench_api

    result = await bench_api(server_settings, requests=300, concurrency=4, processes=2)
    assert result["statuses"] == {201: 300}
    assert result["jobs_stored"] == 300 + 4  # and one untimed request per connection
    assert 0 < result["p50_ms"] <= result["p99_ms"] <= result["max_ms"]
    assert result["throughput_req_s"] > 0
    out = with_limits(result, {"insert": {"tps": result["throughput_req_s"] * 2}})
    assert out["ratio_to_limits"] == 0.5


async def test_batch_bench_stores_and_queues_every_job(server_settings: Settings) -> None:
    from loadtests.bench.core import bench_batch

    result = await bench_batch(server_settings, jobs=2_500, batch_size=1_000, concurrency=2)
    assert result["stored"] == 2_500  # PENDING rows with the bench's payload, counted after
    assert result["queued"] == 2_500
    assert 0 < result["batch_p50_ms"] <= result["batch_p99_ms"]
    limits = {"insert_batch": {"rows_s": result["throughput_jobs_s"] * 4}}
    assert with_limits(result, limits)["ratio_to_limits"] == 0.25


@pytest.mark.parametrize("rate", [None, 400.0])
async def test_core_bench_runs_every_operation_closed_and_open_loop(
        server_settings: Settings, rate: float | None) -> None:
    from loadtests.bench.core import bench_core

    result = await bench_core(server_settings, ops=200, concurrency=4, rate=rate)
    assert result["completed"] == 200  # the warm-up's jobs are not counted
    assert result["mode"] == ("closed loop" if rate is None else "open loop")
    for op in ("create", "acquire", "complete"):
        r = result["operations"][op]
        assert r["ops"] == 200
        assert 0 < r["p50_ms"] <= r["p99_ms"] <= r["p999_ms"] <= r["max_ms"]
        if rate is not None:  # open loop: never faster than offered, latency from due time
            assert r["offered_ops_s"] == rate
            assert r["throughput_ops_s"] <= rate * 200 / 199 + 0.1
            assert r["start_late_p99_ms"] <= r["max_ms"]


async def test_proxy_bench_measures_both_paths(server_settings: Settings, tmp_path: Path
                                               ) -> None:
    from dataclasses import replace

    from loadtests.bench.proxy import bench_proxy

    result = await bench_proxy(replace(server_settings, data_dir=tmp_path), ops=200, rounds=2)
    assert result["round_trips"] == 200
    assert result["direct"]["p50_us"] > 0
    assert result["proxied"]["p50_us"] > 0
    assert isinstance(result["added_p50_us"], float)
    assert (tmp_path / "logs" / "bench-proxy.log").exists()  # a real proxy process ran


@pytest.fixture
def own_valkey(tmp_path: Path) -> Iterator[str]:
    """A Valkey server of this test's own: `INFO commandstats` counts every client's calls,
    and the session's server also serves the tests running beside this one."""
    with private_valkey(tmp_path) as address:
        yield f"redis://{address}/0"


async def test_dispatch_rows_drain_every_job_and_compare_with_one_tenant(
        server_settings: Settings, own_valkey: str) -> None:
    from dataclasses import replace

    from loadtests.bench.dispatch import bench_dispatch

    seen: list[tuple[str, int, int]] = []
    settings = replace(server_settings, redis_url=own_valkey)
    result = await bench_dispatch(settings, tenants=[1, 300], jobs=200, acquires=30,
                                  concurrency=5, rounds=1,
                                  progress=lambda n, d, t: seen.append((n, d, t)))
    assert result["jobs"] == 300  # raised to the largest tenant count: each has a job
    one, many = result["rows"]
    assert (one["tenants"], many["tenants"]) == (1, 300)
    assert one["drain_ratio"] == 1.0
    for row in (one, many):
        assert row["drain_jobs_s"] > 0
        assert row["redis_us_per_acquire"] > 0
        assert row["acquire_p50_ms"] <= row["acquire_p99_ms"]
        # the CPU per acquire is averaged over the acquires' script calls alone (the
        # write-behind indexing of the queued jobs ended before they began; the first call of
        # the script on this fresh server, refused with NOSCRIPT and sent again, is not one)
        assert row["script_calls"] == 30
    assert ("drain over 300 tenants", 300, 300) in seen  # every job ran


async def test_a_drains_cpu_is_measured_per_part_over_the_jobs_of_its_window(
        server_settings: Settings) -> None:
    from dataclasses import replace

    from core.jobs.model import JobSpec
    from loadtests.bench.cpu import CpuMeter, descendants
    from loadtests.bench.dispatch import drain
    from loadtests.bench.procs import scratch_runtime

    settings = replace(server_settings, heartbeat_interval_s=2.0, heartbeat_ttl_s=10.0,
                       memory=False)
    cpu = CpuMeter(descendants)
    with pytest.raises(RuntimeError, match="not opened and closed"):
        cpu.per_job_us()  # no window yet: no figure, rather than a division by nothing
    async with scratch_runtime(settings, f"benchcpu_{os.getpid()}") as rt:
        await rt.service.create_batch([JobSpec(job_type="noop") for _ in range(300)])
        assert await drain(rt, 300, processes=1, concurrency=5, cpu=cpu) > 0
    parts = cpu.per_job_us()
    assert set(parts) == {"postgres", "valkey", "clients"}
    # every part worked for the drain: the worker process (a child of this one) ran the
    # handlers, PostgreSQL leased and completed, Valkey ran the acquire scripts
    assert parts["clients"] > 0
    assert parts["postgres"] > 0
    assert parts["valkey"] > 0
