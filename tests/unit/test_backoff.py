import random

import pytest

from core.jobs.backoff import BackoffPolicy


def test_seed_progression_without_jitter() -> None:
    policy = BackoffPolicy(base_s=1.0, factor=2.0, max_s=300.0, jitter_s=0.0)
    assert [policy.delay_s(n) for n in range(5)] == [1.0, 2.0, 4.0, 8.0, 16.0]


def test_capped_at_max_even_with_jitter_and_huge_counts() -> None:
    policy = BackoffPolicy(base_s=1.0, max_s=10.0, jitter_s=5.0)
    rng = random.Random(3)
    assert all(policy.delay_s(n, rng) <= 10.0 for n in range(0, 2000, 7))


def test_jitter_is_bounded_and_seedable() -> None:
    policy = BackoffPolicy(base_s=1.0, max_s=100.0, jitter_s=0.5)
    a = [policy.delay_s(2, random.Random(42)) for _ in range(3)]
    b = [policy.delay_s(2, random.Random(42)) for _ in range(3)]
    assert a == b
    assert all(4.0 <= d <= 4.5 for d in a)


@pytest.mark.parametrize("kwargs", [{"base_s": -1}, {"max_s": -1}, {"jitter_s": -0.1},
                                    {"factor": 0.5}])
def test_rejects_bad_policy(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="backoff"):
        BackoffPolicy(**kwargs)


def test_rejects_negative_retry_count() -> None:
    with pytest.raises(ValueError, match="retry_count"):
        BackoffPolicy().delay_s(-1)
