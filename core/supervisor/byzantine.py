"""Quarantine of misbehaving (Byzantine) workers. Evidence is recorded where a misbehaviour
shows (core/service/registry.py: forged lease tokens, leases left to lapse while heartbeating,
claimed capabilities without a handler); each round the supervisor reads the recent evidence
against its live workers and quarantines the ones with `QUARANTINE_AFTER` pieces within
`WINDOW_S`: no more leases (the lease statements refuse a QUARANTINED worker), its leases
released, the process asked to go, and a successor started. One piece is not enough: a
single lapse can be bad luck (a stall between a heartbeat and a lease extension); a worker
that keeps misbehaving is not unlucky."""

from __future__ import annotations

from collections import Counter, defaultdict

from core.service.jobs import JobService

QUARANTINE_AFTER = 3
WINDOW_S = 300.0


async def misbehaving(service: JobService, worker_ids: list[str], stats: Counter[str]
                      ) -> list[tuple[str, str]]:
    """(worker id, reason naming the evidence) of each worker to quarantine now."""
    if not worker_ids:
        return []
    pieces: dict[str, list[tuple[str, int, str]]] = defaultdict(list)
    for row in await service.recent_evidence(worker_ids, WINDOW_S):
        pieces[row["worker_id"]].append((row["kind"], int(row["n"]), row["detail"]))
    out = []
    for wid, kinds in sorted(pieces.items()):
        if sum(n for _, n, _ in kinds) < QUARANTINE_AFTER:
            continue
        for kind, n, _ in kinds:
            stats[f"quarantined_for_{kind}"] += n
        stats["quarantined"] += 1
        out.append((wid, "quarantined: " + "; ".join(
            f"{kind} x{n} (last: {detail})" for kind, n, detail in sorted(kinds))))
    return out
