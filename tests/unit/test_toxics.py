"""Toxic definitions as the fault proxy reads them (pure): toxiproxy's defaults and
leniencies, and the one place it is stricter on purpose (a negative attribute is refused:
toxiproxy would take `latency: -1` and behave as 0, hiding a typo in a drill)."""

from __future__ import annotations

import pytest

from chaos.toxics import REGISTRY, ToxicError, make_toxic


def test_defaults_and_leniencies_follow_toxiproxy() -> None:
    t = make_toxic({"type": "latency", "stream": "UPSTREAM", "attributes": {"latency": 5,
                                                                         "typo": 1}})
    assert t.as_dict() == {"name": "latency_UPSTREAM", "type": "latency", "stream": "upstream",
                           "toxicity": 1.0, "attributes": {"latency": 5, "jitter": 0}}
    assert make_toxic({"type": "noop"}).stream == "downstream"
    assert set(REGISTRY) == {"noop", "latency", "bandwidth", "slow_close", "timeout",
                             "reset_peer", "limit_data", "slicer"}


@pytest.mark.parametrize(("spec", "message"), [
    ({"type": "latency", "stream": ""}, "stream was invalid"),
    ({"type": "latency", "stream": "sideways"}, "stream was invalid"),
    ({"type": "earthquake"}, "invalid toxic type"),
    ({"type": "latency", "attributes": {"latency": -1}}, "must be a number >= 0"),
    ({"type": "latency", "attributes": {"latency": "fast"}}, "must be a number >= 0"),
    ({"type": "latency", "toxicity": 2}, "toxicity must be between 0 and 1"),
    ({"type": "latency", "toxicity": float("nan")}, "toxicity must be a number"),
    ({"type": "latency", "attributes": {"latency": float("nan")}}, "must be a number >= 0"),
    ({"type": "latency", "attributes": {"latency": float("inf")}}, "must be a number >= 0"),
    ({"type": "latency", "attributes": [1]}, "attributes must be an object"),
])
def test_bad_toxics_are_refused_with_the_reason(spec: dict[str, object], message: str) -> None:
    with pytest.raises(ToxicError, match=message):
        make_toxic(spec)
