from __future__ import annotations

import random
from typing import Any

import pytest

import amora_protocol as ap


def seeded(seed: int) -> random.Random:
    return random.Random(seed)  # noqa: S311 - jitter tests need reproducible draws


def test_full_jitter_stays_under_an_exponential_capped_ceiling():
    backoff = ap.Backoff(initial=0.5, maximum=8.0, rng=seeded(7))
    ceilings = []
    for _ in range(10):
        ceiling = backoff.ceiling()
        delay = backoff.next_delay()
        assert 0.0 <= delay <= ceiling
        ceilings.append(ceiling)
    assert ceilings[:5] == [0.5, 1.0, 2.0, 4.0, 8.0]
    assert ceilings[5:] == [8.0] * 5
    assert backoff.attempt == 10


def test_the_multiplier_sets_the_growth():
    backoff = ap.Backoff(initial=1.0, maximum=100.0, multiplier=3.0, rng=seeded(1))
    ceilings = []
    for _ in range(4):
        ceilings.append(backoff.ceiling())
        backoff.next_delay()
    assert ceilings == [1.0, 3.0, 9.0, 27.0]


def test_clients_that_failed_together_spread_out():
    # 200 clients on their 6th attempt do not pick the same delay.
    delays = []
    for seed in range(200):
        backoff = ap.Backoff(initial=0.1, maximum=30.0, rng=seeded(seed))
        for _ in range(5):
            backoff.next_delay()
        delays.append(backoff.next_delay())
    assert len({round(d, 3) for d in delays}) > 150
    assert min(delays) < 0.8 < max(delays)


def test_reset_starts_over():
    backoff = ap.Backoff(initial=0.1, maximum=10.0)
    for _ in range(5):
        backoff.next_delay()
    backoff.reset()
    assert backoff.ceiling() == 0.1
    assert backoff.attempt == 0


def test_very_long_outages_do_not_overflow():
    backoff = ap.Backoff(initial=0.1, maximum=10.0)
    for _ in range(2000):
        backoff.next_delay()
    assert backoff.ceiling() == 10.0


def test_zero_initial_delay_retries_at_once():
    backoff = ap.Backoff(initial=0.0, maximum=0.0)
    assert backoff.next_delay() == 0.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"initial": -1.0, "maximum": 1.0}, "initial"),
        ({"initial": 2.0, "maximum": 1.0}, "maximum"),
        ({"initial": 1.0, "maximum": 2.0, "multiplier": 0.5}, "multiplier"),
    ],
)
def test_bad_bounds_are_refused_with_the_cause(kwargs: dict[str, Any], match: str):
    with pytest.raises(ValueError, match=match):
        ap.Backoff(**kwargs)
