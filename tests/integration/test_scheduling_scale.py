"""Fair shares and limits with 10,000 tenants on the real stores, and an acquisition whose
work does not grow with them: the Redis commands one acquire runs (Valkey's own count for the
service's one connection, `tot-cmds` of `CLIENT INFO`, which counts the commands a script
calls) are the same with 1 tenant queued as with 10,000."""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from core.contract.keys import limit_field
from core.jobs.model import JobSpec
from core.service.jobs import JobService
from core.settings import Settings
from tests.conftest import open_service
from tests.integration.test_scheduling import set_limit

TENANTS = 10_000


@pytest.fixture
async def service(settings: Settings) -> AsyncIterator[JobService]:
    """A service with one Redis connection, so that connection's own command count is the
    service's (the server is shared with the suite's other test process: a server-wide count
    would take its commands in too)."""
    async with open_service(settings, redis_connections=1) as svc:
        yield svc


async def commands_run(svc: JobService, step: Callable[[], Awaitable[Any]]) -> int:
    """How many commands Redis ran for `step` on the service's connection (a script's own
    calls included; the count's reading itself is one, taken off)."""
    async def total() -> int:
        return int((await svc.dispatch.client.client_info())["tot-cmds"])

    before = await total()
    await step()
    return await total() - before - 1


async def create_spread(svc: JobService, tenants: int, per_tenant: int,
                        job_type: str = "noop") -> None:
    specs = [JobSpec(job_type=job_type, tenant=f"t{i:05d}")
             for _ in range(per_tenant) for i in range(tenants)]
    for start in range(0, len(specs), 5000):
        await svc.create_batch(specs[start:start + 5000])


async def test_every_tenant_gets_its_turn_before_any_gets_a_second(
        service: JobService) -> None:
    await service.create_batch([JobSpec(job_type="noop", tenant="flood")
                                for _ in range(3000)])
    await create_spread(service, TENANTS, 2)
    got: collections.Counter[str] = collections.Counter()
    rows: list[str] = []
    while len(rows) < TENANTS + 1:
        leases = await service.acquire_many("w1", 500)
        assert leases
        rows += [lease.job_id for lease in leases]
    rows = rows[:TENANTS + 1]
    tenants = await service.pool.fetch(
        "SELECT tenant FROM jobs WHERE id = ANY($1::uuid[])", rows)
    got.update(r["tenant"] for r in tenants)
    # one round: each of the 10,001 tenants once, the flood's 3,000 jobs no more than anyone
    assert len(got) == TENANTS + 1
    assert set(got.values()) == {1}


async def test_a_weight_holds_among_10000_tenants(service: JobService) -> None:
    """Stride scheduling: a tenant of weight 4 moves its pass a quarter per job, so in each
    round of the 10,000 others (one job each) it gets four."""
    await set_limit(service, "tenant", "heavy", weight=4)
    await service.create_batch([JobSpec(job_type="noop", tenant="heavy")
                                for _ in range(2000)])
    await create_spread(service, TENANTS, 2)
    leases = []
    while len(leases) < 2 * (TENANTS + 4):
        leases += await service.acquire_many("w1", min(1000, 2 * (TENANTS + 4) - len(leases)))
    counts: collections.Counter[str] = collections.Counter(
        r["tenant"] for r in await service.pool.fetch(
            "SELECT tenant FROM jobs WHERE id = ANY($1::uuid[])",
            [lease.job_id for lease in leases]))
    assert counts.pop("heavy") == 8  # two rounds, four turns each
    assert len(counts) == TENANTS
    assert set(counts.values()) == {2}


async def test_limits_hold_with_10000_tenants_and_cost_no_scan(service: JobService) -> None:
    await set_limit(service, "job_type", "sleep", max_running=5)
    await set_limit(service, "tenant", "t00007", max_running=1)
    await create_spread(service, TENANTS, 1, job_type="sleep")
    await create_spread(service, TENANTS, 2, job_type="noop")
    leased = []
    while True:
        batch = await service.acquire_many("w1", 1000)
        if not batch:
            break
        leased += batch
    types = collections.Counter(lease.job_type for lease in leased)
    assert types["sleep"] == 5  # the type's limit
    # every noop but the second of the tenant limited to one at a time
    assert types["noop"] == 2 * TENANTS - 1
    state = await service.dispatch.sched_state()
    assert state.running[limit_field("job_type", "sleep")] == 5
    assert state.running[limit_field("tenant", "t00007")] == 1

    # one more acquire with nothing admissible left costs the same as with one tenant
    crowded = await commands_run(service, lambda: service.acquire_many("w1", 10))
    assert crowded <= 40, crowded
    # a sleep ends: the type has room for one, and exactly one more sleep is admitted
    done = next(lease for lease in leased if lease.job_type == "sleep")
    await service.complete(done.job_id, done.token)
    again = await service.acquire_many("w1", 10)
    assert [lease.job_type for lease in again] == ["sleep"]


async def test_one_acquire_runs_as_many_commands_with_10000_tenants_as_with_five(
        service: JobService) -> None:
    # An acquire of five jobs over five tenants reads each tenant's pass, limit and flow once
    # (one tenant's are read once for all five jobs): the baseline is five tenants queued.
    await create_spread(service, 5, 10)
    await service.acquire_many("w1", 5)  # warm: passes and sets exist
    few = await commands_run(service, lambda: service.acquire_many("w1", 5))
    await create_spread(service, TENANTS, 3)
    await service.acquire_many("w1", 5)
    crowded = await commands_run(service, lambda: service.acquire_many("w1", 5))
    assert crowded <= few + 2, (few, crowded)
