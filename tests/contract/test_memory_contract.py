"""One contract suite for the state-memory port, run against the in-memory fake and the real
Qdrant client in local mode (an on-disk folder). TTLs are tested with a clock moved by hand."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from core.errors import InvalidInput
from core.memory.port import (
    JOB_NS,
    WORKER_NS,
    FakeClock,
    InMemoryStateMemory,
    StateEvent,
    StateMemory,
    VersionConflict,
    coalesce,
    decode_batch,
    encode_batch,
)
from core.memory.qdrant import QdrantStateMemory


@pytest.fixture(params=["fake", "qdrant-local"])
async def memory(request: pytest.FixtureRequest, tmp_path: Path
                 ) -> AsyncIterator[tuple[StateMemory, FakeClock]]:
    clock = FakeClock()
    if request.param == "fake":
        yield InMemoryStateMemory(clock), clock
        return
    mem = await QdrantStateMemory(path=tmp_path / "qdrant", prefix="t", clock=clock).open()
    try:
        yield mem, clock
    finally:
        await mem.close()


async def test_put_get_per_namespace(memory: tuple[StateMemory, FakeClock]) -> None:
    mem, _ = memory
    e = await mem.put(JOB_NS, "job:1:state", {"status": "PENDING"}, ttl_s=60)
    assert e.version > 0
    assert e.group == "job:1"
    got = await mem.get(JOB_NS, "job:1:state")
    assert got is not None
    assert got.value == {"status": "PENDING"}
    assert await mem.get(WORKER_NS, "job:1:state") is None  # namespaces are isolated
    await mem.put(WORKER_NS, "job:1:state", {"other": True}, ttl_s=60)
    assert (await mem.get(JOB_NS, "job:1:state")).value == {"status": "PENDING"}  # type: ignore[union-attr]
    assert await mem.count(JOB_NS) == 1
    assert await mem.count(WORKER_NS) == 1


async def test_ttl_expiry_and_purge(memory: tuple[StateMemory, FakeClock]) -> None:
    mem, clock = memory
    await mem.put(JOB_NS, "job:1:state", {"a": 1}, ttl_s=10)
    await mem.put(JOB_NS, "job:2:result", {"b": 2}, ttl_s=1000)
    clock.advance(11)
    assert await mem.get(JOB_NS, "job:1:state") is None  # expired: never returned
    assert [e.key for e in await mem.list(JOB_NS)] == ["job:2:result"]
    assert await mem.count(JOB_NS) == 1
    assert await mem.purge_expired() == 1
    assert await mem.purge_expired() == 0
    # an expired key counts as absent for compare-and-set
    again = await mem.put(JOB_NS, "job:1:state", {"a": 2}, ttl_s=10, expected_version=0)
    assert again.value == {"a": 2}


async def test_compare_and_set_loser_learns_the_winner(
    memory: tuple[StateMemory, FakeClock]
) -> None:
    mem, _ = memory
    first = await mem.put(WORKER_NS, "worker:w1:state", {"v": "a"}, ttl_s=60,
                          expected_version=0)
    with pytest.raises(VersionConflict):
        await mem.put(WORKER_NS, "worker:w1:state", {"v": "x"}, ttl_s=60, expected_version=0)
    winner = await mem.put(WORKER_NS, "worker:w1:state", {"v": "b"}, ttl_s=60,
                           expected_version=first.version)
    assert winner.version > first.version
    with pytest.raises(VersionConflict) as info:  # a writer that read `first` loses
        await mem.put(WORKER_NS, "worker:w1:state", {"v": "c"}, ttl_s=60,
                      expected_version=first.version)
    assert info.value.current == winner
    assert info.value.expected == first.version
    assert (await mem.get(WORKER_NS, "worker:w1:state")).value == {"v": "b"}  # type: ignore[union-attr]
    blind = await mem.put(WORKER_NS, "worker:w1:state", {"v": "d"}, ttl_s=60)
    assert blind.version > winner.version  # blind writes win by order, with a new version


async def test_concurrent_cas_writers_exactly_one_wins(
    memory: tuple[StateMemory, FakeClock]
) -> None:
    mem, _ = memory
    base = await mem.put(JOB_NS, "job:9:state", {"n": 0}, ttl_s=60)
    results = await asyncio.gather(
        *(mem.put(JOB_NS, "job:9:state", {"n": i}, ttl_s=60, expected_version=base.version)
          for i in range(1, 6)), return_exceptions=True)
    winners = [r for r in results if not isinstance(r, Exception)]
    assert len(winners) == 1
    assert all(isinstance(r, VersionConflict) for r in results if r not in winners)


async def test_group_listing_delete_and_batches(memory: tuple[StateMemory, FakeClock]) -> None:
    mem, _ = memory
    n = await mem.put_many([(JOB_NS, f"job:{i}:state", {"i": i}, 60.0) for i in range(5)]
                           + [(JOB_NS, "job:1:result", {"r": 1}, 60.0)])
    assert n == 6
    assert [e.key for e in await mem.list(JOB_NS, group="job:1")] == ["job:1:result",
                                                                       "job:1:state"]
    assert len(await mem.list(JOB_NS, limit=3)) == 3
    assert await mem.delete(JOB_NS, "job:1:state") is True
    assert await mem.delete(JOB_NS, "job:1:state") is False
    assert await mem.delete_many([(JOB_NS, "job:2:state"), (JOB_NS, "job:3:state")]) == 2
    assert [e.key for e in await mem.list(JOB_NS)] == ["job:0:state", "job:1:result",
                                                       "job:4:state"]
    await mem.wipe()
    assert await mem.count(JOB_NS) == 0


async def test_bad_input_is_refused(memory: tuple[StateMemory, FakeClock]) -> None:
    mem, _ = memory
    with pytest.raises(InvalidInput, match="namespace"):
        await mem.put("other", "k", {}, ttl_s=1)
    with pytest.raises(InvalidInput, match="ttl_s"):
        await mem.put(JOB_NS, "k", {}, ttl_s=0)
    with pytest.raises(InvalidInput, match="key"):
        await mem.get(JOB_NS, "")
    assert await mem.count(JOB_NS) == 0


def test_events_round_trip_and_coalesce() -> None:
    a = StateEvent(op="put", namespace=JOB_NS, key="job:1:state", value={"s": 1}, ttl_s=5)
    b = StateEvent(op="put", namespace=JOB_NS, key="job:2:state", value={"s": 2}, ttl_s=5)
    c = StateEvent(op="delete", namespace=JOB_NS, key="job:1:state")
    assert StateEvent.decode(a.encode()) == a
    assert decode_batch(encode_batch([a, b, c])) == [a, b, c]
    assert coalesce([a, b, c]) == [b, c]
