"""The agent's reconnection instruments against a real mosquitto and a real MPD that both go away."""

import asyncio
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from amora_agent import AgentTelemetry, MpdPlayer
from amora_protocol import DeviceState, VerifyKey, state_topic

pytestmark = pytest.mark.services

DEVICE = "player-1"


def _total(reader: InMemoryMetricReader, name: str) -> float:
    data = reader.get_metrics_data()
    if data is None:
        return 0.0
    total = 0.0
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == name:
                    total += sum(getattr(point, "value", 0) for point in metric.data.data_points)
    return total


def _state(key: VerifyKey, *, healthy: bool) -> Any:
    def check(received: Any) -> bool:
        if received.topic != state_topic(DEVICE):
            return False
        state = received.message(key)
        return isinstance(state, DeviceState) and (state.error is None) is healthy

    return check


async def test_mpd_and_broker_losses_are_counted_and_timed(broker, live_mpd, live_device, live_app) -> None:
    reader = InMemoryMetricReader()
    telemetry = AgentTelemetry(meter_provider=MeterProvider(metric_readers=[reader]))
    device = live_device(broker)
    key = device.signing_key.public_key
    _app, client = live_app(broker, (DEVICE,))
    # As `agent_from_config` wires it.
    player = MpdPlayer(live_mpd.host, live_mpd.port, on_reconnect=lambda: telemetry.mpd_reconnects.add(1))
    async with device.agent(player, telemetry=telemetry) as agent, client:
        await asyncio.wait_for(agent.wait_online(), 15)
        await client.subscribe(state_topic(DEVICE))
        await client.wait_for(_state(key, healthy=True))
        assert (_total(reader, "amora_agent_mqtt_connected"), _total(reader, "amora_agent_mqtt_reconnects")) == (1, 0)
        assert _total(reader, "amora_agent_mpd_reconnects") == 0

        # MPD goes away and comes back: one MPD reconnection.
        mark = len(client.messages)
        await asyncio.to_thread(live_mpd.kill)
        await client.wait_for(_state(key, healthy=False), start=mark)
        mark = len(client.messages)
        await asyncio.to_thread(live_mpd.restart)
        await client.wait_for(_state(key, healthy=True), start=mark)
        assert _total(reader, "amora_agent_mpd_reconnects") == 1

        # The broker goes away and comes back: one MQTT reconnection, the time offline counted.
        await asyncio.to_thread(broker.kill)
        await asyncio.wait_for(agent.wait_broker(lambda b: b is None), 15)
        assert _total(reader, "amora_agent_mqtt_connected") == 0
        await asyncio.to_thread(broker.restart)
        await asyncio.wait_for(agent.wait_broker(lambda b: b is not None), 30)
        assert _total(reader, "amora_agent_mqtt_reconnects") == 1
        assert _total(reader, "amora_agent_mqtt_connected") == 1
        assert _total(reader, "amora_agent_mqtt_disconnected") > 0
