"""The write-behind indexing of new jobs (core/dispatch/behind.py), over a fake enqueue: a
lone create goes at once, a stream is carried by few calls, a Redis failure leaves the jobs to
the reconciler and says how many, and `flushed` waits for everything added before it."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from core.dispatch.behind import IndexWriter
from core.dispatch.records import EnqueueItem
from core.errors import DispatchUnavailable


def item(i: int) -> EnqueueItem:
    return EnqueueItem(job_id=f"job-{i}", priority=3, capability=None, delay_ms=0)


class FakeRedis:
    def __init__(self, *, fail: bool = False) -> None:
        self.calls: list[list[str]] = []
        self.fail = fail

    async def enqueue(self, items: Sequence[EnqueueItem]) -> int:
        await asyncio.sleep(0)  # a round trip: other tasks run meanwhile
        if self.fail:
            raise DispatchUnavailable("down")
        self.calls.append([i.job_id for i in items])
        return len(items)


def test_a_lone_create_goes_at_once_and_a_stream_shares_calls() -> None:
    async def scenario() -> None:
        redis = FakeRedis()
        writer = IndexWriter(redis.enqueue, linger_s=0.05)
        writer.add([item(0)])
        await writer.flushed()
        assert redis.calls == [["job-0"]]
        for i in range(1, 40):  # a stream arriving within the linger after that call
            writer.add([item(i)])
            await asyncio.sleep(0)
        await writer.flushed()
        assert [j for call in redis.calls for j in call] == [f"job-{i}" for i in range(40)]
        assert len(redis.calls) == 2  # everything since the first call rode on one more

    asyncio.run(scenario())


def test_redis_down_twice_leaves_the_jobs_to_the_reconciler_and_counts_them() -> None:
    async def scenario() -> None:
        redis = FakeRedis(fail=True)
        writer = IndexWriter(redis.enqueue, linger_s=0.0, retry_s=0.01)
        deferred: list[int] = []
        writer.add([item(i) for i in range(7)], deferred.append)
        await writer.flushed()  # no caller waits for the second try
        assert deferred == []
        assert writer.task is not None
        await writer.task
        assert sum(deferred) == 7

    asyncio.run(scenario())


def test_a_batch_that_failed_once_is_indexed_when_redis_is_back() -> None:
    async def scenario() -> None:
        redis = FakeRedis(fail=True)
        writer = IndexWriter(redis.enqueue, linger_s=0.0, retry_s=0.01)
        deferred: list[int] = []
        writer.add([item(i) for i in range(3)], deferred.append)
        await writer.flushed()
        redis.fail = False  # the outage ends before the second try
        writer.add([item(3)], deferred.append)
        assert writer.task is not None
        await writer.task
        assert deferred == []
        assert sorted(j for call in redis.calls for j in call) == [f"job-{i}" for i in range(4)]

    asyncio.run(scenario())


def test_beyond_max_waiting_the_oldest_are_left_to_the_reconciler() -> None:
    async def scenario() -> None:
        redis = FakeRedis()
        writer = IndexWriter(redis.enqueue, linger_s=0.0, max_waiting=10)
        deferred: list[int] = []
        writer.add([item(i) for i in range(25)], deferred.append)
        await writer.flushed()
        assert sum(deferred) == 15
        assert [j for call in redis.calls for j in call] == [f"job-{i}" for i in range(15, 25)]

    asyncio.run(scenario())


def test_flushed_waits_for_what_came_before_not_for_a_stream_after_it() -> None:
    async def scenario() -> None:
        redis = FakeRedis()
        writer = IndexWriter(redis.enqueue, linger_s=0.001)
        writer.add([item(0)])
        stop = asyncio.Event()

        async def stream() -> None:  # creates that never stop while the reader waits
            i = 1
            while not stop.is_set():
                writer.add([item(i)])
                i += 1
                await asyncio.sleep(0)

        producer = asyncio.create_task(stream())
        await asyncio.sleep(0)
        await asyncio.wait_for(writer.flushed(), 5)
        assert writer.busy  # the stream goes on, and the reader was not held behind it
        assert "job-0" in {j for call in redis.calls for j in call}
        stop.set()
        await producer
        await writer.flushed()

    asyncio.run(scenario())
