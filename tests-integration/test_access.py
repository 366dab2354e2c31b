"""The access matrix, checked with an independent MQTT client (paho), not only the SDK."""

from __future__ import annotations

import httpx
import pytest

from amora_devtools.stack import Stack
from amora_protocol import commands_topic, state_topic

REFUSED = 0x80  # MQTT 5 reason codes from 0x80 up are failures


def test_user_reaches_exactly_their_devices(stack: Stack, new_session, mqtt_probe):
    assert stack.pki is not None
    ca = stack.pki.ca_file
    broker = stack.brokers[0]
    alice = new_session(stack, "alice")
    creds = alice["broker"]
    with mqtt_probe(
        broker.app_port, ca, username=creds["username"], password=creds["password"], client_id=creds["client_id"]
    ) as p:
        assert p.connect_rc == 0
        # Own device: state readable (the retained state arrives).
        assert p.subscribe(state_topic("player-2"))[0] < REFUSED
        assert p.wait_message(lambda m: m.topic == state_topic("player-2")) is not None
        # Another user's device, a wildcard across devices, and everything: refused.
        assert p.subscribe(state_topic("player-3"))[0] >= REFUSED
        assert p.subscribe("amora/devices/+/state")[0] >= REFUSED
        assert p.subscribe("amora/#")[0] >= REFUSED
        assert p.subscribe("#")[0] >= REFUSED
        # Commands are write-only for apps: reading another session's commands is refused too.
        assert p.subscribe(commands_topic("player-2"))[0] >= REFUSED


def test_commands_to_other_users_devices_never_arrive(stack: Stack, new_session, mqtt_probe):
    assert stack.pki is not None
    broker = stack.brokers[0]
    creds = new_session(stack, "alice")["broker"]
    with (
        broker.admin_client() as admin,  # the admin account may read every topic
        mqtt_probe(
            broker.app_port,
            stack.pki.ca_file,
            username=creds["username"],
            password=creds["password"],
            client_id=creds["client_id"],
        ) as p,
    ):
        admin.subscribe("amora/devices/+/commands")
        assert p.connect_rc == 0
        p.publish(commands_topic("player-3"), b"not-alice's-device")
        p.publish(commands_topic("player-2"), b"alice's-device")  # the positive control
        seen = []
        while (message := admin.receive(timeout=3.0)) is not None:
            seen.append((message.topic, message.payload))
            if message.payload == b"alice's-device":
                break
        assert (commands_topic("player-2"), b"alice's-device") in seen
        assert all(topic != commands_topic("player-3") for topic, _ in seen)


def test_user_without_devices_reaches_nothing(stack: Stack, new_session, mqtt_probe):
    assert stack.pki is not None
    carol = new_session(stack, "carol")
    assert carol["devices"] == []
    creds = carol["broker"]
    with mqtt_probe(
        stack.brokers[0].app_port,
        stack.pki.ca_file,
        username=creds["username"],
        password=creds["password"],
        client_id=creds["client_id"],
    ) as p:
        assert p.connect_rc == 0
        for device in ("player-1", "player-2", "player-3"):
            assert p.subscribe(state_topic(device))[0] >= REFUSED


@pytest.mark.parametrize("listener", ["app", "websockets"])
def test_anonymous_and_unknown_clients_are_refused(stack: Stack, listener: str, new_session, mqtt_probe):
    assert stack.pki is not None
    broker = stack.brokers[0]
    port = broker.app_port if listener == "app" else broker.ws_port
    ws = listener == "websockets"
    # Positive control: a real session is accepted on this listener.
    b = new_session(stack, "alice")["broker"]
    creds = {"username": b["username"], "password": b["password"], "client_id": b["client_id"]}
    with mqtt_probe(port, stack.pki.ca_file, websockets=ws, **creds) as p:
        assert p.connect_rc == 0
    for attempt in ({}, {"username": "player-1", "password": ""}, {"username": "nobody", "password": "x"}):
        with mqtt_probe(port, stack.pki.ca_file, websockets=ws, **attempt) as p:
            assert p.connect_rc is None or p.connect_rc >= REFUSED, attempt


def test_session_credential_is_refused_on_the_device_listener(stack: Stack, new_session, mqtt_probe):
    assert stack.pki is not None
    creds = new_session(stack, "alice")["broker"]
    # Without a client certificate the TLS handshake fails: no CONNACK at all.
    with mqtt_probe(
        stack.brokers[0].device_port, stack.pki.ca_file, username=creds["username"], password=creds["password"]
    ) as p:
        assert p.connect_rc is None


def test_logged_out_credential_is_refused(stack: Stack, new_session, mqtt_probe):
    assert stack.pki is not None
    session = new_session(stack, "alice")
    creds = session["broker"]
    response = httpx.delete(
        f"{stack.authz_url}/v1/sessions/{session['session_id']}",
        headers={"Authorization": f"Bearer {session['token']}"},
        timeout=10,
    )
    assert response.status_code == 204
    with mqtt_probe(
        stack.brokers[0].app_port,
        stack.pki.ca_file,
        username=creds["username"],
        password=creds["password"],
        client_id=creds["client_id"],
    ) as p:
        assert p.connect_rc is None or p.connect_rc >= REFUSED


def test_bad_tokens_get_a_clear_401(stack: Stack):
    for header in ({"Authorization": "Bearer not-a-jwt"}, {}):
        response = httpx.post(
            f"{stack.authz_url}/v1/sessions", json={"signing_key": "", "encryption_key": ""}, headers=header, timeout=10
        )
        assert response.status_code == 401
        body = response.json()
        assert body["code"]
        assert body["message"]
