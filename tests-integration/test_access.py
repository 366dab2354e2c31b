"""The access matrix, checked with an independent MQTT client (paho), not only the SDK."""

from __future__ import annotations

import socket
import ssl

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
    with mqtt_probe(broker.app_port, ca, session=creds) as p:
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
        mqtt_probe(broker.app_port, stack.pki.ca_file, session=creds) as p,
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
    with mqtt_probe(stack.brokers[0].app_port, stack.pki.ca_file, session=creds) as p:
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


def _first_bytes_without_certificate(port: int, ca_file: str, packet: bytes) -> bytes:
    """Send ``packet`` over TLS with no client certificate; return what comes back (b"" if refused).

    TLS 1.3 finishes the client's side of the handshake before the server checks the (missing)
    certificate, so the refusal arrives as an alert on the first read.
    """
    context = ssl.create_default_context(cafile=ca_file)
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            tls.sendall(packet)
            return tls.recv(4)
    except (ssl.SSLError, ConnectionError):
        return b""


def test_session_credential_is_refused_on_the_device_listener(stack: Stack, new_session):
    assert stack.pki is not None
    creds = new_session(stack, "alice")["broker"]

    def field(text: str) -> bytes:
        return len(text).to_bytes(2, "big") + text.encode()

    # An MQTT 5 CONNECT (clean start, username, password) with the session's credential.
    body = field("MQTT") + bytes([5, 0xC2]) + (30).to_bytes(2, "big") + b"\x00"
    body += field(creds["client_id"]) + field(creds["username"]) + field(creds["password"])
    length, remaining = bytearray(), len(body)
    while True:  # MQTT's variable-length "remaining length"
        remaining, byte = divmod(remaining, 128)
        length.append(byte | (0x80 if remaining else 0))
        if not remaining:
            break
    connect = bytes([0x10]) + bytes(length) + body
    ca = str(stack.pki.ca_file)
    assert _first_bytes_without_certificate(stack.brokers[0].device_port, ca, connect) == b""
    # The control: the same bytes on the app listener get a successful CONNACK.
    context = ssl.create_default_context(cafile=ca)
    with (
        socket.create_connection(("127.0.0.1", stack.brokers[0].app_port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        tls.sendall(connect)
        connack = b""
        while len(connack) < 4 and (chunk := tls.recv(4 - len(connack))):
            connack += chunk
    assert connack[0] == 0x20
    assert connack[3] == 0  # reason code: success


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
    with mqtt_probe(stack.brokers[0].app_port, stack.pki.ca_file, session=creds) as p:
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
