"""Broker failover: the primary dies, the agent moves to the standby, and back when it returns."""

import asyncio

import pytest

from amora_agent import BrokerEndpoint, DesiredSettings, SimulatedPlayer
from amora_protocol import (
    CommandStatus,
    DeviceState,
    SetVolume,
    responses_topic,
    state_topic,
)

pytestmark = [pytest.mark.services, pytest.mark.slow]

DEVICE = "player-1"


async def test_primary_loss_moves_to_standby_and_back(broker_pair, live_device, live_app) -> None:
    primary, standby = broker_pair
    device = live_device(primary, standby)
    key = device.signing_key.public_key
    player = SimulatedPlayer(volume=10)
    app, client = live_app(standby, (DEVICE,))
    async with device.agent(player) as agent, client:
        await asyncio.wait_for(agent.wait_online(), 15)
        assert agent.broker.port == primary.device_port
        await client.subscribe(state_topic(DEVICE), responses_topic(DEVICE))
        before = (await client.wait_for(lambda r: r.topic == state_topic(DEVICE))).message(key)

        await asyncio.to_thread(primary.kill)
        on_standby = lambda b: b is not None and b.port == standby.device_port  # noqa: E731
        await asyncio.wait_for(agent.wait_broker(on_standby), 20)

        # State keeps flowing on the standby, newer than anything before.
        mark = len(client.messages)
        player.apply(SetVolume(volume=20))

        def newer(received) -> bool:
            if received.topic != state_topic(DEVICE):
                return False
            state = received.message(key)
            return isinstance(state, DeviceState) and state.volume == 20

        after = (await client.wait_for(newer, start=mark)).message(key)
        assert after.version > before.version
        # And commands reach it there.
        answer = await client.send(app, DEVICE, SetVolume(volume=33), key=key)
        assert answer.status is CommandStatus.SUCCEEDED

        # The primary returns: the agent moves back to it.
        await asyncio.to_thread(primary.restart)
        on_primary = lambda b: b is not None and b.port == primary.device_port  # noqa: E731
        await asyncio.wait_for(agent.wait_broker(on_primary), 20)

        # The restarted primary kept no session: the agent subscribed again, commands arrive.
        app2, on_primary_client = live_app(primary, (DEVICE,))
        async with on_primary_client:
            await on_primary_client.subscribe(responses_topic(DEVICE))
            answer = await on_primary_client.send(app2, DEVICE, SetVolume(volume=44), key=key)
            assert answer.status is CommandStatus.SUCCEEDED
        assert player.snapshot_now().volume == 44

        # The device twin can move it: a broker list without the primary.
        agent.apply_desired(DesiredSettings(brokers=(BrokerEndpoint(host=standby.host, port=standby.device_port),)))
        await asyncio.wait_for(agent.wait_broker(on_standby), 20)
