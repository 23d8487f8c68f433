"""The HTTP API as a real uvicorn process: the seed's lifecycle through HTTP, and every
endpoint fuzzed from the OpenAPI schema with zero 5xx."""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import math
import os
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import hypothesis
import pytest
import schemathesis
from hypothesis import strategies as st

from core.infra.embedded import free_port
from core.service.jobs import JobService
from core.service.runtime import create_dispatch
from core.settings import Settings, to_env
from core.store.pools import create_pool
from tests.conftest import fresh_database, settings_for, wait_until


@dataclass
class ApiEnv:
    url: str
    settings: Settings
    process: asyncio.subprocess.Process




@pytest.fixture(scope="module")
async def api_env(server_settings: Settings, template_db: str) -> AsyncIterator[ApiEnv]:
    async with fresh_database(server_settings, template_db) as dsn:
        settings = settings_for(server_settings, dsn)
        port = free_port()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "core.cli", "api", "--port", str(port), "--pool-size", "4",
            env={**os.environ, **to_env(settings)}, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        async with httpx.AsyncClient() as client:
            while True:  # readiness: the server answers /health
                try:
                    if (await client.get(f"{url}/health")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if proc.returncode is not None or time.monotonic() > deadline:
                    raise AssertionError("the API process did not become ready")
                await asyncio.sleep(0.05)
        try:
            yield ApiEnv(url=url, settings=settings, process=proc)
        finally:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 10)


@pytest.fixture
async def api_service(api_env: ApiEnv) -> AsyncIterator[JobService]:
    """A job service on the API's database (the workers' side of the lifecycle)."""
    pool = await create_pool(api_env.settings, max_size=2)
    dispatch = create_dispatch(api_env.settings)
    try:
        yield JobService(pool, dispatch, api_env.settings)
    finally:
        await dispatch.close()
        await pool.close()


async def test_lifecycle_through_http(api_env: ApiEnv, api_service: JobService) -> None:
    async with httpx.AsyncClient(base_url=api_env.url) as http:
        r = await http.post("/jobs", json={"job_type": "noop", "priority": 5,
                                           "payload": {"n": 1}, "tenant": "acme"})
        assert r.status_code == 201, r.text
        job_id = r.json()["job_id"]
        assert (await http.get(f"/jobs/{job_id}")).json()["tenant"] == "acme"
        lease = await api_service.acquire("http-worker")
        assert lease is not None
        assert lease.job_id == job_id
        await api_service.complete(lease.job_id, lease.token, {"ok": True})
        body = (await http.get(f"/jobs/{job_id}")).json()
        assert body["status"] == "COMPLETED"
        assert body["result"] == {"ok": True}
        assert [e["status"] for e in body["executions"]] == ["COMPLETED"]

        r = await http.post("/jobs/batch", json={"jobs": [
            {"job_type": "flaky", "max_retries": 0, "ref": "a"},
            {"job_type": "noop", "depends_on": ["a"]}]})
        assert r.status_code == 201
        parent, child = r.json()
        assert child["status"] == "WAITING"
        # the API process indexes its creates write-behind: another process may see a job of
        # a stream of creates up to the writer's linger later (core/dispatch/behind.py)
        leased = []

        async def leased_one() -> bool:
            got = await api_service.acquire("http-worker")
            if got is not None:
                leased.append(got)
            return bool(leased)

        await wait_until(leased_one, what="the batch's parent to be dispatchable")
        lease = leased[0]
        assert lease.job_id == parent["job_id"]
        await api_service.fail(lease.job_id, lease.token, "boom")
        dlq = (await http.get("/dlq")).json()
        assert [d["job_id"] for d in dlq] == [parent["job_id"]]
        assert (await http.get(f"/jobs/{child['job_id']}")).json()["status"] == "CANCELLED"
        assert (await http.post(f"/dlq/{parent['job_id']}/requeue")).status_code == 200
        assert (await http.get("/dlq")).json() == []

        r = await http.post("/jobs", json={"job_type": "noop"})
        queued = r.json()["job_id"]
        before = (await http.get("/metrics")).text
        assert 'jobharness_jobs{status="PENDING"} 2.0' in before  # with the requeued one
        assert 'jobharness_jobs_estimated{status="PENDING"} 0.0' in before
        r = await http.post(f"/jobs/{queued}/cancel", json={"reason": "no longer needed"})
        assert r.json()["status"] == "CANCELLED"
        assert (await http.post(f"/jobs/{queued}/cancel")).status_code == 409

        queues = (await http.get("/queues")).json()
        assert queues["redis"] is not None
        assert queues["postgres"]["COMPLETED"] == 1
        health = (await http.get("/health")).json()
        assert health["status"] == "ok"
        assert health["postgres"]["state"] == "up"
        metrics = (await http.get("/metrics")).text
        assert 'jobharness_jobs{status="COMPLETED"} 1.0' in metrics
        assert "jobharness_queue_depth" in metrics
        # the cancelled job no longer counts as PENDING
        assert 'jobharness_jobs{status="PENDING"} 1.0' in metrics
        assert 'jobharness_jobs{status="CANCELLED"} 2.0' in metrics  # and the DLQ's child
        # how attempts ended, counted as they end (not by reading the executions table)
        assert 'jobharness_executions_total{status="FAILED"} 1.0' in metrics


async def test_a_count_past_the_cap_is_the_planners_estimate(
        service: JobService, monkeypatch: pytest.MonkeyPatch) -> None:
    """A scrape reads at most COUNT_CAP index entries per status; past it the gauge is the
    planner's estimate, and says so."""
    from types import SimpleNamespace

    from core.api import metrics as metrics_mod
    from core.jobs.model import JobSpec

    await service.create_batch([JobSpec(job_type="noop") for _ in range(12)])
    await service.pool.execute("ANALYZE jobs")
    monkeypatch.setattr(metrics_mod, "COUNT_CAP", 5)
    m = metrics_mod.Metrics()
    await metrics_mod.read_postgres(m, SimpleNamespace(pool=service.pool))  # type: ignore[arg-type]
    value = m.registry.get_sample_value
    assert value("jobharness_jobs", {"status": "PENDING"}) == 12  # ANALYZE read every row
    assert value("jobharness_jobs_estimated", {"status": "PENDING"}) == 1
    assert value("jobharness_jobs", {"status": "COMPLETED"}) == 0
    assert value("jobharness_jobs_estimated", {"status": "COMPLETED"}) == 0


async def test_cancel_of_a_running_job_through_http(api_env: ApiEnv,
                                                    api_service: JobService) -> None:
    """POST /jobs/{id}/cancel on a running job answers PROCESSING (asked, not done); the
    worker learns it at its next lease extension, stops the handler and the job ends
    CANCELLED with the reason given."""
    from core.worker.loop import Worker

    started = asyncio.Event()

    async def hang(payload: dict[str, object]) -> None:
        started.set()
        await asyncio.Event().wait()

    async with httpx.AsyncClient(base_url=api_env.url) as http:
        job_id = (await http.post("/jobs", json={"job_type": "hang"})).json()["job_id"]
        worker = Worker(api_service, "http-canceller", {"hang": hang}, lease_s=0.3)
        stop = asyncio.Event()
        running = asyncio.create_task(worker.run(stop))
        await asyncio.wait_for(started.wait(), 10)
        r = await http.post(f"/jobs/{job_id}/cancel", json={"reason": "stop it"})
        assert r.status_code == 200
        assert r.json()["status"] == "PROCESSING"

        async def cancelled() -> bool:
            return (await http.get(f"/jobs/{job_id}")).json()["status"] == "CANCELLED"

        await wait_until(cancelled, what="the running job to be cancelled")
        stop.set()
        await running
        body = (await http.get(f"/jobs/{job_id}")).json()
        assert body["cancel_reason"] == "stop it"
        assert [e["status"] for e in body["executions"]] == ["CANCELLED"]
        assert (await http.post(f"/jobs/{job_id}/cancel")).status_code == 409


async def test_bad_input_is_4xx_naming_the_field_and_writes_nothing(
    api_env: ApiEnv, api_service: JobService
) -> None:
    before = await api_service.pool.fetchval("SELECT count(*) FROM jobs")
    cases = [
        ({"job_type": "noop", "priority": 0}, "priority"),
        ({"job_type": "nope"}, "job_type"),
        ({"job_type": "noop", "payload": {"x": "y" * 300_000}}, "payload"),
        ({"job_type": "noop", "depends_on": ["00000000-0000-4000-8000-000000000000"]},
         "depends_on"),
        ({"job_type": "noop", "surprise": 1}, "surprise"),
        ({"priority": 3}, "job_type"),
        ({"job_type": "noop", "tenant": ""}, "tenant"),
        ({"job_type": "noop", "tenant": "t" * 201}, "tenant"),
    ]
    async with httpx.AsyncClient(base_url=api_env.url) as http:
        for body, field in cases:
            r = await http.post("/jobs", json=body)
            assert r.status_code == 422, (body, r.text)
            assert field in str(r.json()["detail"][0]["loc"]), r.text
        r = await http.post("/jobs/batch", json={"jobs": [
            {"job_type": "noop", "ref": "a", "depends_on": ["b"]},
            {"job_type": "noop", "ref": "b", "depends_on": ["a"]}]})
        assert r.status_code == 422
        assert "cycle" in r.text
        r = await http.post("/jobs", content=b'{"job_type": "noop",',
                            headers={"content-type": "application/json"})
        assert r.status_code == 422
        assert (await http.get("/jobs/not-a-uuid")).status_code == 422
        # NUL cannot be stored by PostgreSQL: refused as input, never a 500
        assert (await http.get("/jobs", params={"job_type": "a\x00b"})).status_code == 422
        assert (await http.get("/dlq", params={"job_type": "\x00"})).status_code == 422
        for body in ({"job_type": "noop", "payload": {"x": "a\u0000"}},
                     {"job_type": "noop", "idempotency_key": "k\u0000"},
                     {"job_type": "noop", "tenant": "t\u0000"},
                     {"job_type": "noop", "payload": {"k\u0000": 1}}):
            r = await http.post("/jobs", json=body)
            assert r.status_code == 422, (body, r.text)
        assert (await http.get("/jobs/00000000-0000-4000-8000-000000000000")).status_code == 404
        # not numbers, not text, not the type: 4xx naming the field, never a 500, no echo
        for body, field in (
                (b'{"job_type": "noop", "timeout_s": NaN}', "timeout_s"),
                (b'{"job_type": "noop", "delay_s": Infinity}', "delay_s"),
                (b'{"job_type": "noop", "priority": "3"}', "priority"),
                (b'{"job_type": "noop", "priority": true}', "priority"),
                (b'{"job_type": "noop", "tenant": "\\udabc"}', "tenant"),
                (b'{"job_type": "noop", "ref": "a\\udfff"}', "ref"),
                (b'{"job_type": "noop", "payload": {"k": "\\udabc"}}', "payload"),
                (b'{"job_type": "noop", "payload": {"x": NaN}}', "payload")):
            r = await http.post("/jobs", content=body,
                                headers={"content-type": "application/json"})
            assert r.status_code == 422, (body, r.text)
            assert field in r.text, (body, r.text)
            assert "udabc" not in r.text.lower()  # the input is not echoed
        for body, field in ((b'{"rate_per_s": 1e-300}', "rate_per_s"),
                            (b'{"rate_per_s": Infinity}', "rate_per_s"),
                            (b'{"max_running": "2"}', "max_running")):
            r = await http.put("/limits/tenant/acme", content=body,
                               headers={"content-type": "application/json"})
            assert r.status_code == 422, (body, r.text)
            assert field in r.text
        r = await http.post("/dlq/purge", content=b'{"older_than_days": NaN}',
                            headers={"content-type": "application/json"})
        assert r.status_code == 422, r.text
        # purging every dead-letter entry for good needs an explicit confirm
        r = await http.post("/dlq/purge", json={"all": True})
        assert r.status_code == 422, r.text
        assert "confirm" in r.text
        r = await http.post("/dlq/purge", json={"all": True, "confirm": True})
        assert r.status_code == 200, r.text
    assert await api_service.pool.fetchval("SELECT count(*) FROM jobs") == before


async def test_limits_change_at_run_time_and_show_in_metrics(
        api_env: ApiEnv, api_service: JobService) -> None:
    async with httpx.AsyncClient(base_url=api_env.url) as http:
        r = await http.put("/limits/tenant/acme", json={"max_running": 1, "weight": 2})
        assert r.status_code == 200, r.text
        assert r.json()["enforced"] is True
        a = [(await http.post("/jobs", json={"job_type": "noop", "tenant": "acme"})).json()
             for _ in range(2)]
        acme = {j["job_id"] for j in a}
        # (earlier tests of this module may have left jobs queued: they are taken too)
        got = await api_service.acquire_many("w-api", 50)
        leases = [lease for lease in got if lease.job_id in acme]
        assert len(leases) == 1  # acme may run one at a time
        metrics = (await http.get("/metrics")).text
        assert 'jobharness_limit_max_running{name="acme",scope="tenant"} 1.0' in metrics
        assert 'jobharness_limit_weight{name="acme",scope="tenant"} 2.0' in metrics
        assert 'jobharness_limit_running{name="acme",scope="tenant"} 1.0' in metrics
        assert 'jobharness_limit_enforced{name="acme",scope="tenant"} 1.0' in metrics
        assert 'jobharness_limit_waits_total{name="acme",scope="tenant"}' in metrics
        (row,) = (await http.get("/limits")).json()["limits"]
        assert (row["name"], row["max_running"], row["running"]) == ("acme", 1, 1)
        # a page at a time: `next` names where the following page starts
        assert (await http.put("/limits/tenant/zeta", json={"max_running": 3})).status_code == 200
        first = (await http.get("/limits", params={"limit": 1})).json()
        assert ([r["name"] for r in first["limits"]], first["next"]) == (["acme"], "tenant:acme")
        second = (await http.get("/limits", params={"limit": 1, "after": first["next"]})).json()
        assert [r["name"] for r in second["limits"]] == ["zeta"]
        third = (await http.get("/limits", params={"limit": 1, "after": second["next"]})).json()
        assert third == {"limits": [], "next": None}
        r = await http.get("/limits", params={"after": "acme"})
        assert r.status_code == 422, r.text
        assert "after" in str(r.json()["detail"][0]["loc"]), r.text
        assert (await http.delete("/limits/tenant/zeta")).status_code == 200
        # bad input: 422 naming the field, nothing changed
        for path, body, field in (
                ("/limits/job_type/noop", {"weight": 2}, "weight"),
                ("/limits/job_type/nosuch", {"max_running": 1}, "name"),
                ("/limits/tenant/acme", {"max_running": 0}, "max_running"),
                ("/limits/tenant/acme", {"burst": 3}, "burst"),
                ("/limits/tenant/acme", {}, "limit"),
                ("/limits/queue/acme", {"max_running": 1}, "scope")):
            r = await http.put(path, json=body)
            assert r.status_code == 422, (path, body, r.text)
            assert field in str(r.json()["detail"][0]["loc"]), (field, r.text)
        (row,) = (await http.get("/limits")).json()["limits"]
        assert (row["max_running"], row["weight"]) == (1, 2)
        # raised at run time: the second acme job may start now
        r = await http.put("/limits/tenant/acme", json={"max_running": 2})
        assert r.status_code == 200
        later = await api_service.acquire_many("w-api", 50)
        assert [lease.job_id for lease in later] == list(acme - {leases[0].job_id})
        for lease in [*got, *later]:
            await api_service.complete(lease.job_id, lease.token)
        assert (await http.delete("/limits/tenant/acme")).status_code == 200
        assert (await http.delete("/limits/tenant/acme")).status_code == 404
        assert (await http.get("/limits")).json()["limits"] == []
        assert {j["status"] for j in a} == {"PENDING"}


def test_fuzz_every_endpoint_has_no_5xx(api_env: ApiEnv) -> None:
    """Hypothesis cases generated by schemathesis from the served OpenAPI schema, for every
    operation; any 5xx fails with the request that caused it."""
    schema = schemathesis.openapi.from_url(f"{api_env.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 12
    seen: dict[str, set[int]] = {}
    statuses: collections.Counter[int] = collections.Counter()

    modes = (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)
    for operation, mode in itertools.product(operations, modes):
        @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
        @hypothesis.settings(max_examples=25, deadline=None, database=None,
                             suppress_health_check=list(hypothesis.HealthCheck))
        def check(case: schemathesis.Case) -> None:
            response = case.call(timeout=30)
            seen.setdefault(f"{case.method} {case.path}", set()).add(response.status_code)
            statuses[response.status_code // 100] += 1
            # 503 answers a missing dependency (no state-memory owner runs here), which the
            # body names; no input may cause a 5xx.
            dependency = response.status_code == 503 and '"memory"' in response.text
            assert response.status_code < 500 or dependency, (
                f"{case.method} {case.formatted_path} -> {response.status_code}: "
                f"{response.text[:500]}")

        try:
            check()
        except hypothesis.errors.Unsatisfiable:
            # An operation without parameters or body has no invalid input to send.
            assert mode is schemathesis.GenerationMode.NEGATIVE, operation.label
    assert len(seen) == len(operations)
    assert statuses[2] > 0
    assert statuses[4] > 0


POISON = (math.nan, math.inf, -math.inf, "\ud800", "a\udfffb", "\x00")


def _plant(body: Any, path: list[int], poison: Any) -> Any:
    """`body` with one value replaced by `poison`: the one `path` leads to through the
    containers (each step an index into a container's items, taken modulo its size)."""
    if not path or not isinstance(body, dict | list) or not body:
        return poison
    step, rest = path[0], path[1:]
    if isinstance(body, dict):
        key = list(body)[step % len(body)]
        return {**body, key: _plant(body[key], rest, poison)}
    i = step % len(body)
    return [*body[:i], _plant(body[i], rest, poison), *body[i + 1:]]


def test_fuzz_nan_infinity_and_surrogates_are_4xx_never_5xx(api_env: ApiEnv) -> None:
    """Valid bodies generated from the schema, each with one value (at any depth) replaced by
    NaN, Infinity, a lone surrogate or NUL, sent as JSON text (Python writes NaN and escapes a
    surrogate as \\ud800): every one is refused with a 4xx that does not echo it."""
    schema = schemathesis.openapi.from_url(f"{api_env.url}/openapi.json")
    with_body = [op for op in (r.ok() for r in schema.get_all_operations())
                 if op.method.upper() in ("POST", "PUT") and op.body]
    assert len(with_body) >= 3
    statuses: collections.Counter[int] = collections.Counter()
    for operation in with_body:
        @hypothesis.given(case=operation.as_strategy(
                              generation_mode=schemathesis.GenerationMode.POSITIVE),
                          path=st.lists(st.integers(0, 50), max_size=4),
                          poison=st.sampled_from(POISON))
        @hypothesis.settings(max_examples=30, deadline=None, database=None,
                             suppress_health_check=list(hypothesis.HealthCheck))
        def check(case: schemathesis.Case, path: list[int], poison: Any) -> None:
            body = _plant(case.body, path, poison)
            raw = json.dumps(body, allow_nan=True).encode()
            r = httpx.request(case.method, f"{api_env.url}{case.formatted_path}",
                              params=case.query, content=raw, timeout=30,
                              headers={"content-type": "application/json"})
            statuses[r.status_code] += 1
            assert 400 <= r.status_code < 500, (case.method, case.formatted_path, raw[:300],
                                                r.status_code, r.text[:300])
            for echoed in ("ud800", "udfff"):
                assert echoed not in r.text, r.text[:300]

        check()
    assert sum(statuses.values()) >= 30 * len(with_body) // 2


async def test_bodies_are_limited_while_they_stream(api_env: ApiEnv) -> None:
    """A chunked body has no length to refuse it by: it is counted as it arrives and cut off
    with 413 once past the limit, without the server reading (or holding) the rest."""
    from core.api.errors import MAX_BODY_BYTES

    sent = [0]

    async def chunks() -> AsyncIterator[bytes]:
        part = b"x" * (1 << 20)
        while sent[0] < 2 * MAX_BODY_BYTES:
            sent[0] += len(part)
            yield part

    def rss_mib() -> float:
        status = Path(f"/proc/{api_env.process.pid}/status").read_text()
        return int(status.split("VmRSS:")[1].split()[0]) / 1024

    before = rss_mib()
    async with httpx.AsyncClient(base_url=api_env.url, timeout=60) as http:
        try:
            r = await http.post("/jobs/batch", content=chunks(),
                                headers={"content-type": "application/json"})
        except httpx.HTTPError:  # the server may close before the client finished sending
            r = None
        if r is not None:
            assert r.status_code == 413, r.text[:200]
        assert (await http.get("/health")).status_code == 200  # and the server is fine
    # the server held at most the limit, never the 128 MiB the client sent
    assert rss_mib() - before < MAX_BODY_BYTES / 2**20 + 32
