"""State memory end to end: job and worker events travel through Redis to the memory owner,
which writes them to real Qdrant (local mode). Steps are driven explicitly (flush, consume,
apply), so nothing waits on time."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
from qdrant_client import AsyncQdrantClient

from core.infra.embedded import free_port
from core.jobs.model import JobSpec
from core.memory.events import MemoryEmitter
from core.memory.owner import MemoryOwner
from core.memory.port import JOB_NS, WORKER_NS
from core.memory.qdrant import QdrantStateMemory
from core.service.jobs import JobService
from core.service.runtime import create_dispatch
from core.settings import MemoryTtls, Settings


@pytest.fixture
async def mem_service(service: JobService) -> AsyncIterator[JobService]:
    emitter = MemoryEmitter(service.dispatch, MemoryTtls())
    svc = JobService(service.pool, service.dispatch, service.settings, memory=emitter)
    yield svc
    await emitter.close()


@pytest.fixture
async def qdrant(tmp_path: Path, settings: Settings) -> AsyncIterator[QdrantStateMemory]:
    mem = await QdrantStateMemory(path=tmp_path / "qdrant", prefix=settings.prefix).open()
    yield mem
    await mem.close()


async def deliver(svc: JobService, owner: MemoryOwner) -> None:
    """Ship everything emitted so far and let the owner apply it."""
    assert svc.memory is not None
    await svc.memory.flush()
    while await owner.consume_once(block_ms=10):
        pass
    await owner.drain()


async def test_lifecycle_state_reaches_qdrant_and_is_cleaned_up(
    mem_service: JobService, qdrant: QdrantStateMemory
) -> None:
    owner = MemoryOwner(qdrant, mem_service.dispatch)
    await mem_service.register_worker("w1", ["gpu"], concurrency=2)
    ok = await mem_service.create(JobSpec(job_type="noop", priority=4))
    bad = await mem_service.create(JobSpec(job_type="flaky", max_retries=0))
    await deliver(mem_service, owner)
    state = await qdrant.get(JOB_NS, f"job:{ok.job_id}:state")
    assert state is not None
    assert state.value["status"] == "PENDING"
    config = await qdrant.get(WORKER_NS, "worker:w1:config")
    assert config is not None
    assert config.value["capabilities"] == ["gpu"]
    assert config.expires_at - config.written_at == pytest.approx(3600)

    for _ in range(2):
        lease = await mem_service.acquire("w1")
        assert lease is not None
        if lease.job_id == ok.job_id:
            await mem_service.complete(lease.job_id, lease.token, {"answer": 42})
        else:
            await mem_service.fail(lease.job_id, lease.token, "boom")
    await deliver(mem_service, owner)
    # completion: the result stays (24 h), the transient state is gone
    result = await qdrant.get(JOB_NS, f"job:{ok.job_id}:result")
    assert result is not None
    assert result.value == {"result": {"answer": 42}}
    assert result.expires_at - result.written_at == pytest.approx(24 * 3600)
    assert await qdrant.get(JOB_NS, f"job:{ok.job_id}:state") is None
    # death: a failure record kept 90 days
    failure = await qdrant.get(JOB_NS, f"job:{bad.job_id}:failure")
    assert failure is not None
    assert failure.value["error"] == "boom"
    assert failure.expires_at - failure.written_at == pytest.approx(90 * 86400)
    assert await qdrant.get(JOB_NS, f"job:{bad.job_id}:state") is None
    assert owner.stats["memory_written"] > owner.stats["memory_ops"] > 0  # coalesced


async def test_snapshot_wipe_restore_round_trip(
    mem_service: JobService, qdrant: QdrantStateMemory, tmp_path: Path
) -> None:
    owner = MemoryOwner(qdrant, mem_service.dispatch)
    await mem_service.create_batch([JobSpec(job_type="noop") for _ in range(25)])
    await mem_service.register_worker("w9", [], concurrency=1)
    await deliver(mem_service, owner)
    before = {ns: [(e.key, e.value) for e in await qdrant.list(ns, limit=1000)]
              for ns in (JOB_NS, WORKER_NS)}
    snap = await owner.snapshot(tmp_path / "snap.jsonl.gz")
    assert snap["counts"] == {JOB_NS: 25, WORKER_NS: 2}
    await qdrant.wipe()
    assert await qdrant.count(JOB_NS) == 0
    restored = await owner.restore(tmp_path / "snap.jsonl.gz")
    assert restored["restored"] == 27
    assert restored["skipped_expired"] == 0
    after = {ns: [(e.key, e.value) for e in await qdrant.list(ns, limit=1000)]
             for ns in (JOB_NS, WORKER_NS)}
    assert after == before




async def test_qdrant_unreachable_jobs_unaffected_and_drops_counted(
    mem_service: JobService,
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    dead = QdrantStateMemory(url=url, prefix="x", timeout_s=0.5)
    dead._client = AsyncQdrantClient(url=url, timeout=1, check_compatibility=False)
    owner = MemoryOwner(dead, mem_service.dispatch, max_buffer=5)
    created = await mem_service.create_batch([JobSpec(job_type="noop") for _ in range(6)])
    for _ in created:
        lease = await mem_service.acquire("w1")
        assert lease is not None
        await mem_service.complete(lease.job_id, lease.token)
    assert (await mem_service.counts())["COMPLETED"] == 6  # job operations unaffected
    await deliver(mem_service, owner)  # the owner cannot write: it keeps what fits
    status = owner.status()
    assert status["state"] == "down"
    assert "Qdrant" in status["last_error"]
    assert status["memory_write_failures"] >= 1
    emitted = mem_service.memory.stats["memory_emitted"]  # type: ignore[union-attr]
    assert emitted == 6 * 4  # per job: state on create, state on lease, result, state delete
    assert status["memory_dropped"] == emitted - 5  # the 5 newest stay buffered for a retry
    assert status["buffered"] == 5
    await owner.publish_status()
    raw = await mem_service.dispatch.client.hgetall(mem_service.dispatch.keys.memory_owner)
    assert raw["state"] == "down"
    assert raw["memory_dropped"] == str(emitted - 5)
    await dead.close()


async def test_emitter_drops_and_counts_when_redis_is_down(
    service: JobService, settings: Settings
) -> None:
    broken = create_dispatch(replace(settings, redis_url=f"redis://127.0.0.1:{free_port()}/0",
                                     redis_timeout_s=0.2))
    emitter = MemoryEmitter(broken)
    svc = JobService(service.pool, broken, service.settings, memory=emitter)
    created = await svc.create(JobSpec(job_type="noop"))  # commits without Redis
    assert (await svc.get(created.job_id)).status.value == "PENDING"
    await emitter.flush()
    assert emitter.stats["memory_dropped"] == 1
    await emitter.close()
    await broken.close()


async def test_snapshots_are_named_files_of_the_owner_and_restore_checks_before_wiping(
    mem_service: JobService, qdrant: QdrantStateMemory, tmp_path: Path
) -> None:
    """Over HTTP a snapshot is a name in the owner's folder: a path anywhere else is refused
    (nothing written, nothing read), and a restore with one bad entry and wipe=true changes
    nothing."""
    import gzip
    import json

    import httpx

    from core.memory.http import memory_app

    owner = MemoryOwner(qdrant, mem_service.dispatch)
    await mem_service.create_batch([JobSpec(job_type="noop") for _ in range(5)])
    await deliver(mem_service, owner)
    held = await qdrant.count(JOB_NS)
    assert held == 5
    snapshots = tmp_path / "snapshots"
    snapshots.mkdir()
    app = memory_app(owner, snapshots)
    outside = tmp_path / "elsewhere" / "x.gz"
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://owner") as http:
        for body in ({"path": str(outside)}, {"name": "../x.gz"}, {"name": "a/b"},
                     {"name": "/etc/passwd"}, {"name": ""}, {"name": 7}):
            r = await http.post("/snapshot", json=body)
            assert r.status_code == 422, (body, r.text)
            assert str(outside) not in r.text
        assert not outside.parent.exists()
        r = await http.post("/restore", json={"name": "passwd"})  # not in the folder
        assert r.status_code == 422
        r = await http.post("/snapshot", json={"name": "good.gz"})
        assert r.status_code == 200, r.text
        assert (snapshots / "good.gz").is_file()
        bad = snapshots / "bad.gz"
        with gzip.open(snapshots / "good.gz", "rt") as fh:
            lines = fh.read().splitlines()
        with gzip.open(bad, "wt") as fh:
            fh.write("\n".join([*lines, json.dumps({"namespace": "nope", "key": "k",
                                                    "value": 1, "expires_at": 1e12})]))
        r = await http.post("/restore", json={"name": "bad.gz", "wipe": True})
        assert r.status_code == 422, r.text
        assert "line" in r.text
        assert await qdrant.count(JOB_NS) == held  # validated before the wipe
        r = await http.post("/restore", json={"name": "good.gz", "wipe": True})
        assert r.status_code == 200, r.text
        assert await qdrant.count(JOB_NS) == held
