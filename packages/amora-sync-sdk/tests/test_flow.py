import asyncio
import random

import pytest

from amora_sync import ReconnectPolicy
from amora_sync._flow import Backoff, LatestPerKeyQueue, QueueClosedError


def test_backoff_is_full_jitter_under_an_exponential_capped_ceiling():
    policy = ReconnectPolicy(initial_delay=0.5, max_delay=8.0, multiplier=2.0)
    backoff = Backoff(policy=policy, rng=random.Random(7))  # noqa: S311 - jitter, not secrets
    ceilings = []
    for _ in range(12):
        ceiling = backoff.ceiling()
        delay = backoff.next_delay()
        assert 0.0 <= delay <= ceiling
        ceilings.append(ceiling)
    assert ceilings[:5] == [0.5, 1.0, 2.0, 4.0, 8.0]
    assert set(ceilings[4:]) == {8.0}
    backoff.reset()
    assert backoff.ceiling() == 0.5


def test_backoff_spreads_clients_that_failed_together():
    # Jitter: 200 clients on their 6th attempt do not pick the same delay.
    delays = []
    for seed in range(200):
        backoff = Backoff(
            policy=ReconnectPolicy(initial_delay=0.1, max_delay=30),
            rng=random.Random(seed),  # noqa: S311 - jitter, not secrets
        )
        backoff.attempt = 5
        delays.append(backoff.next_delay())
    assert len({round(d, 3) for d in delays}) > 150
    assert min(delays) < 0.8 < max(delays)


def test_backoff_survives_very_long_outages():
    backoff = Backoff(policy=ReconnectPolicy(max_delay=30.0))
    backoff.attempt = 10_000
    assert backoff.ceiling() == 30.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"initial_delay": -1},
        {"initial_delay": 5, "max_delay": 1},
        {"multiplier": 0.5},
        {"connect_timeout": 0},
    ],
)
def test_reconnect_policy_rejects_nonsense(kwargs):
    with pytest.raises(ValueError, match=r"must|need"):
        ReconnectPolicy(**kwargs)


def test_queue_keeps_latest_per_key_in_first_arrival_order():
    queue: LatestPerKeyQueue[str, int] = LatestPerKeyQueue(max_keys=10)
    queue.put("a", 1)
    queue.put("b", 1)
    queue.put("a", 2)
    queue.put("a", 3)
    assert len(queue) == 2
    assert queue.superseded == 2
    assert queue.get_nowait() == 3
    assert queue.get_nowait() == 1
    assert queue.get_nowait() is None


def test_queue_bounds_keys_by_dropping_the_oldest():
    queue: LatestPerKeyQueue[int, int] = LatestPerKeyQueue(max_keys=3)
    for key in range(5):
        queue.put(key, key)
    assert len(queue) == 3
    assert queue.dropped == 2
    assert [queue.get_nowait() for _ in range(3)] == [2, 3, 4]


async def test_queue_get_waits_for_put_and_ends_after_close():
    queue: LatestPerKeyQueue[str, int] = LatestPerKeyQueue(max_keys=2)
    getter = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    assert not getter.done()
    queue.put("x", 42)
    assert await asyncio.wait_for(getter, 5) == 42
    queue.put("y", 1)
    queue.close()
    queue.put("z", 2)  # ignored once closed
    assert await queue.get() == 1
    with pytest.raises(QueueClosedError):
        await queue.get()
