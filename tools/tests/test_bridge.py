from __future__ import annotations

import pytest

from amora_devtools import BrokerProcess, DevPKI, MqttClient, create_device_client


def _carry_retained(
    source: BrokerProcess,
    target: BrokerProcess,
    pki: DevPKI,
    device_id: str,
    *,
    topic: str,
    payload: bytes,
) -> None:
    """Publish a retained message on `source` as a device; check `target` keeps it retained."""
    cert = pki.issue_client_cert(device_id)
    create_device_client(source, device_id)
    # Wait for the copy to arrive through the bridge (an event), then check that the
    # target broker stored it as retained: a new subscriber gets it with the retain flag.
    with target.admin_client() as live:
        live.subscribe(topic)
        with MqttClient.connect(source.host, source.device_port, ssl_context=pki.client_context(cert)) as device:
            device.publish(topic, payload, qos=1, retain=True)
        arrived = live.receive()
        assert arrived is not None
        assert (arrived.topic, arrived.payload) == (topic, payload)
    with target.admin_client() as late:
        late.subscribe(topic)
        message = late.receive()
    assert message is not None
    assert (message.topic, message.payload, message.retain) == (topic, payload, True)


@pytest.mark.parametrize("direction", ["primary-to-standby", "standby-to-primary"])
def test_bridge_carries_retained_state(broker_pair, dev_pki, direction):
    primary, standby = broker_pair
    source, target = (primary, standby) if direction == "primary-to-standby" else (standby, primary)
    device_id = f"player-{direction}"
    _carry_retained(source, target, dev_pki, device_id, topic=f"amora/devices/{device_id}/state", payload=b"v1")


def test_standby_reconnects_its_bridge_after_the_primary_restarts(broker_pair, dev_pki):
    primary, standby = broker_pair
    primary.restart()
    standby.wait_bridged()
    _carry_retained(primary, standby, dev_pki, "player-9", topic="amora/devices/player-9/connection", payload=b"on")
