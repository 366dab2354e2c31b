"""The MQTT link against real brokers: hung brokers left, publishes bounded, stale Wills corrected."""

import asyncio
import signal

import pytest

from amora_agent import AgentOptions, SimulatedPlayer
from amora_protocol import SetVolume

pytestmark = [pytest.mark.services, pytest.mark.slow]


async def test_a_hung_broker_is_left_for_the_standby_and_publishes_stay_bounded(broker_pair, live_device) -> None:
    primary, standby = broker_pair
    device = live_device(primary, standby)
    options = AgentOptions(
        durable=False, backoff_initial_s=0.05, liveness_interval_s=0.5, liveness_timeout_s=1.0, max_inflight=8
    )
    async with device.agent(SimulatedPlayer(), options=options) as agent:
        await asyncio.wait_for(agent.wait_online(), 15)
        assert agent.broker is not None
        assert agent.broker.port == primary.device_port
        link = agent._link
        primary.signal(signal.SIGSTOP)  # hung: TCP stays open, nothing is answered
        try:
            # Publishes now wait for acknowledgements that never come: bounded, never an
            # exhausted packet-id pool inside gmqtt.
            accepted = [link.publish("amora/devices/player-1/state", b"x", qos=1) for _ in range(30)]
            assert accepted.count(True) <= 8
            assert link.refused_publishes >= 22
            on_standby = lambda b: b is not None and b.port == standby.device_port  # noqa: E731
            await asyncio.wait_for(agent.wait_broker(on_standby), 20)
        finally:
            primary.signal(signal.SIGCONT)
        assert link.publish("amora/devices/player-1/state", b"y", qos=1)  # a fresh window there


async def test_the_broker_is_probed_only_after_silence(broker, live_device) -> None:
    # An acknowledgement proves the broker's loop answers as well as a probe's SUBACK: a
    # player publishing more often than the interval is never probed (a process of thousands
    # of them made a probe's worth of garbage per agent and interval), an idle one still is.
    device = live_device(broker)
    interval = 0.3
    options = AgentOptions(durable=False, liveness_interval_s=interval, liveness_timeout_s=2.0)
    player = SimulatedPlayer()
    async with device.agent(player, options=options) as agent:
        await asyncio.wait_for(agent.wait_online(), 15)
        client = agent._link._current.client
        probes: list[float] = []
        three = asyncio.Event()
        resubscribe = client.resubscribe

        def counted(subscription, **kwargs):
            probes.append(asyncio.get_running_loop().time())
            if len(probes) >= 3:
                three.set()
            return resubscribe(subscription, **kwargs)

        client.resubscribe = counted
        await asyncio.wait_for(three.wait(), 10)  # idle: probed every interval
        # Busy: a change (a published state, acknowledged) every third of the interval, for
        # ten intervals. At most the probe already under way when the changes began.
        start = len(probes)
        for volume in range(30):
            player.apply(SetVolume(volume=volume))
            await asyncio.sleep(interval / 3)  # pacing the changes, not waiting for an event
        assert len(probes) - start <= 1
        assert agent.state is not None
        assert agent.state.volume == 29
        assert agent._link.refused_publishes == 0
