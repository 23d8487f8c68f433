"""Job ids are time-ordered (UUID version 7): within a batch and from one batch to the next they
sort in creation order, which is how Redis orders jobs of equal priority scored in the same
millisecond."""

from __future__ import annotations

import time

from core.jobs.model import JobSpec, SpecLimits
from core.jobs.planning import plan_batch


def test_ids_sort_in_creation_order_within_and_across_batches() -> None:
    limits = SpecLimits(known_job_types=frozenset({"noop"}), max_payload_bytes=1024)
    first = plan_batch([JobSpec(job_type="noop") for _ in range(5000)], limits).ids
    time.sleep(0.002)  # the next batch in a later millisecond (a clock, not a synchronisation)
    second = plan_batch([JobSpec(job_type="noop")], limits, single=True).ids
    ids = [str(i) for i in [*first, *second]]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert {i.version for i in [*first, *second]} == {7}
    created_ms = int(str(second[0]).replace("-", "")[:12], 16)
    assert abs(created_ms - time.time() * 1000) < 60_000  # the id carries its creation time
