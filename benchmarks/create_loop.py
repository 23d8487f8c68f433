"""What the create-loop benchmarks share (create_profile.py, create_linger.py): a runtime on
this machine's embedded servers in a throw-away schema, warmed up with creates, and the create
they time (a no-op job with a ~200-byte payload, as the peers' enqueue loop sends)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.jobs.model import JobSpec
from core.service.runtime import Runtime, endpoints, open_runtime
from core.settings import load_settings
from loadtests.scratch import scratch_schema

PAYLOAD = {"blob": "x" * 180}


async def create_one(rt: Runtime) -> None:
    await rt.service.create(JobSpec(job_type="noop", payload=PAYLOAD))


@contextlib.asynccontextmanager
async def create_runtime(tag: str, warm: int) -> AsyncIterator[Runtime]:
    """A runtime in schema `tag` whose pool and statements `warm` creates have warmed."""
    with endpoints(load_settings(), keep_running=True) as settings:
        settings = replace(settings, memory=False)
        async with scratch_schema(settings, tag) as scratch, open_runtime(
                scratch, pool_size=4, redis_connections=4, migrate_first=False) as rt:
            for _ in range(max(1, warm)):
                await create_one(rt)
            yield rt
