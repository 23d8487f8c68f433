"""The supervisor's vigil: no stale-heartbeat verdict for a TTL after it stopped watching."""

from __future__ import annotations

from collections import Counter

from core.supervisor.vigil import Vigil


def test_steady_looks_may_judge() -> None:
    v = Vigil(1.5)
    assert all(v.look(t, t + 0.01) for t in (0.0, 0.2, 0.4, 0.6, 1.9))  # gaps under a TTL
    assert v.stats["watch_gaps"] == 0


def test_a_gap_longer_than_a_ttl_holds_every_verdict_for_one_ttl() -> None:
    stats: Counter[str] = Counter()
    v = Vigil(1.5, stats)
    assert v.look(0.0, 0.01)
    assert not v.look(14.0, 14.01)        # it was away 14 s: the ages are its own
    assert not v.look(14.2, 14.21)
    assert not v.look(15.4, 15.41)        # still within a TTL of the gap's end
    assert v.look(15.6, 15.61)            # a TTL on: live workers have beaten since
    assert stats["watch_gaps"] == 1


def test_reads_answering_later_than_a_ttl_are_a_gap_too() -> None:
    v = Vigil(1.5)
    assert v.look(0.0, 0.01)
    assert not v.look(0.2, 3.0)           # the reads took 2.8 s: ages are 2.8 s late
    assert not v.look(3.2, 3.21)
    assert v.look(4.6, 4.61)
    assert v.stats["watch_gaps"] == 1


def test_the_first_look_judges() -> None:
    assert Vigil(1.5).look(100.0, 100.01)  # (a new supervisor has its startup grace)
