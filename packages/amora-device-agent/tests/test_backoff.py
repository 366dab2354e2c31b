import random

import pytest

from amora_agent import Backoff


def seeded(seed: int) -> random.Random:
    return random.Random(seed)  # noqa: S311 - jitter tests need reproducible draws


def test_full_jitter_stays_under_a_doubling_cap() -> None:
    backoff = Backoff(initial=0.5, maximum=8.0, rng=seeded(7))
    caps = []
    for _ in range(10):
        cap = backoff.cap()
        delay = backoff.next_delay()
        assert 0 <= delay <= cap
        caps.append(cap)
    assert caps[:5] == [0.5, 1.0, 2.0, 4.0, 8.0]
    assert caps[5:] == [8.0] * 5


def test_delays_are_spread_not_fixed() -> None:
    delays = {Backoff(initial=1.0, maximum=1.0, rng=seeded(i)).next_delay() for i in range(20)}
    assert len(delays) == 20


def test_reset_starts_over() -> None:
    backoff = Backoff(initial=0.1, maximum=10.0)
    for _ in range(5):
        backoff.next_delay()
    backoff.reset()
    assert backoff.cap() == 0.1
    assert backoff.attempt == 0


def test_huge_attempt_counts_do_not_overflow() -> None:
    backoff = Backoff(initial=0.1, maximum=10.0)
    for _ in range(2000):
        backoff.next_delay()
    assert backoff.cap() == 10.0


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError, match="initial"):
        Backoff(initial=2.0, maximum=1.0)
