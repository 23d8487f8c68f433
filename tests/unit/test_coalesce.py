"""Batching across callers (pure logic: the flush is a plain coroutine)."""

from __future__ import annotations

import asyncio

import pytest

from core.service.coalesce import Coalescer


class Gate:
    """A flush that records its batches and, when closed, holds until opened."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.open = asyncio.Event()
        self.open.set()
        self.entered = asyncio.Event()

    async def flush(self, items: list[int]) -> list[int]:
        self.batches.append(items)
        self.entered.set()
        await self.open.wait()
        if any(i < 0 for i in items):
            raise ValueError(f"negative item in {items}")
        return [i * 10 for i in items]


async def test_at_rest_each_caller_gets_its_own_flush() -> None:
    gate = Gate()
    c = Coalescer(gate.flush, max_flushes=1)
    assert [await c.submit(i) for i in range(3)] == [0, 10, 20]
    assert gate.batches == [[0], [1], [2]]


async def test_callers_submitting_in_the_same_pass_share_a_flush_even_at_rest() -> None:
    gate = Gate()
    c = Coalescer(gate.flush, max_flushes=2)
    # a worker's jobs finishing together: all submit before the loop runs the flush
    assert await asyncio.gather(*(c.submit(i) for i in range(5))) == [0, 10, 20, 30, 40]
    assert gate.batches == [[0, 1, 2, 3, 4]]  # one flush, although two were free


async def test_callers_arriving_during_a_flush_share_the_next_one_in_order() -> None:
    gate = Gate()
    gate.open.clear()
    c = Coalescer(gate.flush, max_flushes=1, max_batch=3)
    first = asyncio.create_task(c.submit(1))
    await gate.entered.wait()
    rest = [asyncio.create_task(c.submit(i)) for i in range(2, 7)]
    await asyncio.sleep(0)
    gate.open.set()
    assert await asyncio.gather(first, *rest) == [10, 20, 30, 40, 50, 60]
    assert gate.batches == [[1], [2, 3, 4], [5, 6]]  # max_batch bounds each flush
    assert (c.batches, c.items) == (3, 6)


async def test_a_failed_flush_fails_its_own_batch_only() -> None:
    gate = Gate()
    gate.open.clear()
    c = Coalescer(gate.flush, max_flushes=1)
    first = asyncio.create_task(c.submit(1))
    await gate.entered.wait()
    bad = [asyncio.create_task(c.submit(i)) for i in (2, -3)]
    await asyncio.sleep(0)
    gate.open.set()
    assert await first == 10
    for task in bad:
        with pytest.raises(ValueError, match=r"negative item in \[2, -3\]"):
            await task
    assert await c.submit(4) == 40


async def test_a_caller_that_gave_up_is_left_out() -> None:
    gate = Gate()
    gate.open.clear()
    c = Coalescer(gate.flush, max_flushes=1)
    first = asyncio.create_task(c.submit(1))
    await gate.entered.wait()
    quitter = asyncio.create_task(c.submit(2))
    stayer = asyncio.create_task(c.submit(3))
    await asyncio.sleep(0)
    quitter.cancel()
    await asyncio.sleep(0)
    gate.open.set()
    assert (await first, await stayer) == (10, 30)
    assert quitter.cancelled()
    assert gate.batches == [[1], [3]]


def test_bad_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="max_batch and max_flushes must be >= 1"):
        Coalescer(Gate().flush, max_batch=0)


async def test_inline_a_lone_caller_flushes_in_its_own_task() -> None:
    seen: list[asyncio.Task[object] | None] = []

    async def flush(items: list[int]) -> list[int]:
        seen.append(asyncio.current_task())
        return [i * 10 for i in items]

    c = Coalescer(flush, max_flushes=2, inline_when_idle=True)

    async def caller(i: int) -> tuple[int, asyncio.Task[object] | None]:
        return await c.submit(i), asyncio.current_task()

    for i in range(3):
        result, task = await asyncio.create_task(caller(i))
        assert result == i * 10
        assert seen[-1] is task  # no flush task of its own
    assert (c.batches, c.items) == (3, 3)


async def test_inline_callers_arriving_meanwhile_share_a_flush_within_max_flushes() -> None:
    gate = Gate()
    gate.open.clear()
    c = Coalescer(gate.flush, max_flushes=2, inline_when_idle=True)
    first = asyncio.create_task(c.submit(1))
    await gate.entered.wait()  # the lone caller's own flush is running
    rest = [asyncio.create_task(c.submit(i)) for i in range(2, 6)]
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    # one flush task took all four: the inline flush counts against max_flushes
    assert gate.batches == [[1], [2, 3, 4, 5]]
    later = [asyncio.create_task(c.submit(i)) for i in (6, 7)]
    await asyncio.sleep(0)
    assert len(gate.batches) == 2  # both flushes busy: the newcomers wait
    gate.open.set()
    assert await asyncio.gather(first, *rest, *later) == [10, 20, 30, 40, 50, 60, 70]
    assert gate.batches == [[1], [2, 3, 4, 5], [6, 7]]


async def test_inline_a_failed_flush_fails_its_caller_and_the_next_one_runs() -> None:
    gate = Gate()
    c = Coalescer(gate.flush, max_flushes=1, inline_when_idle=True)
    with pytest.raises(ValueError, match=r"negative item in \[-1\]"):
        await c.submit(-1)
    assert await c.submit(2) == 20
    assert gate.batches == [[-1], [2]]
