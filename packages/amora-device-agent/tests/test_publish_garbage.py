"""A published state leaves the cyclic garbage collector (almost) nothing while the agent waits.

A fleet's players process holds thousands of agents: whatever GC-tracked object a publish
leaves alive until the next change pushes the collector's count up (see tools/bench,
``garbage``). Counted, not timed.
"""

import asyncio
import collections
import gc

from amora_agent import BrokerEndpoint, SimulatedPlayer
from amora_agent._mqtt import _Connection, _Inflight
from amora_protocol import SetVolume


class _CountingClient:
    """Stands in for the gmqtt client: counts publishes (and keeps nothing of them)."""

    def __init__(self) -> None:
        self.published = 0
        self.event = asyncio.Event()

    def publish(self, _topic: str, _payload: bytes, **_kwargs: object) -> None:
        self.published += 1
        self.event.set()


async def _published(client: _CountingClient, count: int) -> None:
    async with asyncio.timeout(5):
        while client.published < count:
            client.event.clear()
            await client.event.wait()
    for _ in range(5):  # let the publish loop go back to waiting for the next change
        await asyncio.sleep(0)


async def test_a_publish_leaves_a_handful_of_tracked_objects_until_the_next_change(make_offline_agent) -> None:
    player = SimulatedPlayer(volume=0)
    agent = make_offline_agent(player=player)
    client = _CountingClient()
    agent._link._current = _Connection(client, BrokerEndpoint(host="127.0.0.1", port=1), _Inflight())
    task = asyncio.create_task(agent._publish_states())
    try:
        player._on_change = agent._player_changed
        player.apply(SetVolume(volume=1))
        await _published(client, 1)
        gc.collect()
        gc.freeze()
        try:
            for volume in range(2, 12):
                player.apply(SetVolume(volume=volume))
                await _published(client, volume)
            young = collections.Counter(type(o).__qualname__ for o in gc.get_objects())
        finally:
            gc.unfreeze()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert agent.state is not None
    assert agent.state.volume == 11
    # Measured: 9, the publish loop's wait (coroutine, future, wake-up) and this test's own,
    # whatever the number of publishes. The state's fields as a dict, kept in a local until
    # the next change, made a tenth.
    assert young["dict"] == 0, young.most_common(10)
    assert sum(young.values()) <= 12, young.most_common(10)
