"""The MQTT link against real brokers: hung brokers left, publishes bounded, stale Wills corrected."""

import asyncio
import signal

import pytest

from amora_agent import AgentOptions, SimulatedPlayer

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
