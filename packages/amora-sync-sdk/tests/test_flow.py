import asyncio
import inspect

import pytest

from amora_sync import DEFAULT_CONNECT_TIMEOUT, AmoraClient, ReconnectPolicy
from amora_sync._cli import build_parser
from amora_sync._flow import LatestPerKeyQueue, QueueClosedError


def test_the_policy_backs_off_with_the_protocols_full_jitter_within_its_bounds():
    backoff = ReconnectPolicy(initial_delay=0.5, max_delay=8.0, multiplier=2.0).backoff()
    ceilings = []
    for _ in range(8):
        ceiling = backoff.ceiling()
        assert 0.0 <= backoff.next_delay() <= ceiling
        ceilings.append(ceiling)
    assert ceilings == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0, 8.0]
    backoff.reset()
    assert backoff.ceiling() == 0.5


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


def test_one_default_connect_timeout_for_the_client_the_policy_and_the_cli():
    client_default = inspect.signature(AmoraClient).parameters["connect_timeout"].default
    cli_default = build_parser().parse_args(["devices"]).connect_timeout
    assert client_default == ReconnectPolicy().connect_timeout == cli_default == DEFAULT_CONNECT_TIMEOUT


async def test_consumers_that_give_up_waiting_leave_nothing_behind_and_others_still_get_items():
    queue: LatestPerKeyQueue[str, int] = LatestPerKeyQueue(max_keys=2)
    for _ in range(50):  # an app polling with a timeout while nothing arrives
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(queue.get(), 0.001)
    assert len(queue._waiters) <= 1
    first, second = asyncio.create_task(queue.get()), asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    queue.put("x", 1)
    queue.put("y", 2)
    assert sorted(await asyncio.wait_for(asyncio.gather(first, second), 5)) == [1, 2]
    assert queue._waiters == []
