"""The Redis breaker: a failure opens it, one background probe at a time tries Redis, and only
an answered probe closes it (callers never make the reconnect themselves)."""

from __future__ import annotations

import asyncio

from redis.exceptions import ConnectionError as RedisConnectionError

from core.dispatch.breaker import Breaker


class FakeRedis:
    """A probe target: refuses until told to answer; every ping is seen by the test."""

    def __init__(self) -> None:
        self.up = False
        self.pings = 0
        self.pinged = asyncio.Event()
        self.in_flight = 0
        self.most_in_flight = 0

    async def ping(self) -> bool:
        self.pings += 1
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0)
            if not self.up:
                raise RedisConnectionError("Error 111 connecting")
            return True
        finally:
            self.in_flight -= 1
            self.pinged.set()

    async def next_ping(self) -> None:
        self.pinged.clear()
        await asyncio.wait_for(self.pinged.wait(), 5)


async def test_a_failure_opens_it_and_only_an_answered_probe_closes_it() -> None:
    redis = FakeRedis()
    breaker = Breaker(0.01, redis.ping)
    assert breaker.available
    breaker.trip()
    assert not breaker.available
    assert breaker.trips == 1
    for _ in range(3):  # Redis still away: every probe fails, the breaker stays open
        await redis.next_ping()
        assert not breaker.available
    assert breaker.probes_failed["ConnectionError"] >= 3
    redis.up = True
    await redis.next_ping()
    await asyncio.sleep(0)  # the probe's own step after the answer
    assert breaker.available
    await breaker.close()


async def test_many_failing_callers_make_one_probe_not_one_reconnect_each() -> None:
    redis = FakeRedis()
    breaker = Breaker(0.01, redis.ping)
    for _ in range(100):  # a fleet's worth of calls failing at once
        breaker.trip()
    assert breaker.trips == 1  # one opening, not a hundred
    await redis.next_ping()
    await redis.next_ping()
    assert redis.most_in_flight == 1
    assert redis.pings <= 3  # pinged every retry_after_s by one probe, not per caller
    await breaker.close()


async def test_a_reset_closes_it_at_once_and_a_closed_breaker_probes_nothing() -> None:
    redis = FakeRedis()
    breaker = Breaker(60.0, redis.ping)  # a probe far away: only the reset can close it
    breaker.trip()
    breaker.reset()
    assert breaker.available
    await breaker.close()
    assert redis.pings == 0


def test_a_connection_closed_under_a_write_counts_as_redis_away() -> None:
    """uvloop raises RuntimeError for a write to a transport a proxy or server closed
    mid-call (a worker registering as its Redis was cut died of it): that one means Redis is
    away; any other RuntimeError is a bug and is not swallowed."""
    from core.dispatch.breaker import FAILURES, unavailable

    closed = RuntimeError("unable to perform operation on <TCPTransport closed=True "
                          "reading=False 0x5>; the handler is closed")
    assert isinstance(closed, FAILURES)
    assert unavailable(closed)
    assert unavailable(RedisConnectionError("Error 111 connecting"))
    assert unavailable(TimeoutError())
    assert not unavailable(RuntimeError("dictionary changed size during iteration"))
