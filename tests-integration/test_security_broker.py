"""Security suite: what a user's broker credential and a stolen device certificate can do.

Attacks on the real brokers (TLS, dynamic security), each asserting the broker's
specific refusal: every listener, the topic classes an attacker reaches for
(``$share/``, ``$SYS``, ``$CONTROL``, other devices, wildcards), retained publishes and
Last Will abuse; then a stolen device certificate publishing forged and replayed
states, which the broker carries (the certificate is the device's broker identity)
but every client refuses: the state's signature is the device's signing key, which a
certificate thief does not hold (``BadSignature``), and a replayed genuine state is
older than what clients hold (``Freshness.STALE``).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path
from typing import Any

import pytest

from amora_devtools.broker import dynsec
from amora_devtools.stack import Stack
from amora_protocol import (
    DeviceState,
    Freshness,
    PlaybackStatus,
    Sender,
    SigningKey,
    StateTracker,
    UnknownKey,
    VerifyKey,
    commands_topic,
    connection_topic,
    now_ms,
    responses_topic,
    state_topic,
    verify_envelope,
)
from amora_sync import SetVolume

WAIT_S = 15.0
GRANTED_QOS1 = 0x01
NOT_AUTHORIZED = 0x87


def _ca(stack: Stack) -> Path:
    assert stack.pki is not None
    return stack.pki.ca_file


def _session(stack: Stack, new_session: Any, user: str = "alice") -> dict[str, Any]:
    creds = new_session(stack, user)["broker"]
    return {"username": creds["username"], "password": creds["password"], "client_id": creds["client_id"]}


def _first_read_without_certificate(context: ssl.SSLContext, port: int) -> bytes:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=WAIT_S) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.sendall(b"\x10\x00")  # the start of a CONNECT
        return tls.recv(1)


def test_a_user_credential_on_every_listener(security_stack: Stack, new_session: Any, mqtt_probe: Any) -> None:
    stack = security_stack
    broker = stack.brokers[0]
    creds = _session(stack, new_session)
    login = {"username": creds["username"], "password": creds["password"]}
    with mqtt_probe(broker.app_port, _ca(stack), client_id=creds["client_id"], **login) as c:
        assert c.connect_rc == 0
    with mqtt_probe(broker.ws_port, _ca(stack), client_id=creds["client_id"], websockets=True, **login) as c:
        assert c.connect_rc == 0
        assert c.subscribe("$SYS/#")[0] == NOT_AUTHORIZED  # the same ACLs over websockets
    # The device listener takes certificates only: the TLS handshake ends before MQTT starts
    # (under TLS 1.3 the missing certificate shows up as an alert on the first read).
    assert stack.pki is not None
    context = ssl.create_default_context(cafile=str(stack.pki.ca_file))
    # The alert may arrive in the handshake, on the first read, or the broker may have
    # closed first (EOF): all three end the connection before any MQTT.
    with pytest.raises((ssl.SSLError, ConnectionResetError)) as refused:
        _first_read_without_certificate(context, broker.device_port)
    assert isinstance(refused.value, ssl.SSLEOFError | ConnectionResetError) or "CERTIFICATE_REQUIRED" in str(
        refused.value
    )
    # The credential is bound to its own client id: another one (a device's) is refused.
    with mqtt_probe(broker.app_port, _ca(stack), client_id="player-1", **login) as c:
        assert c.connect_rc == NOT_AUTHORIZED
    with mqtt_probe(
        broker.app_port, _ca(stack), client_id=creds["client_id"], username=creds["username"], password="x"
    ) as c:
        assert c.connect_rc == NOT_AUTHORIZED  # mosquitto answers a wrong password so, too


@pytest.mark.parametrize(
    "topic",
    [
        "$SYS/#",
        "$SYS/broker/clients/connected",
        "$CONTROL/dynamic-security/#",
        "$CONTROL/dynamic-security/v1/response",
        "$share/g/#",
        "$share/g/amora/devices/player-3/state",
        "$share/g/amora/devices/player-2/commands",
        "#",
        "amora/#",
        "amora/devices/+/state",
        "+/devices/player-3/state",
        "amora/devices/player-3/state",
        "amora/devices/player-2/commands",
    ],
)
def test_a_user_cannot_subscribe_beyond_their_devices(
    security_stack: Stack, new_session: Any, topic: str, mqtt_probe: Any
) -> None:
    stack = security_stack
    creds = _session(stack, new_session)
    with mqtt_probe(stack.brokers[0].app_port, _ca(stack), **creds) as c:
        assert c.connect_rc == 0
        assert c.subscribe(topic)[0] == NOT_AUTHORIZED, topic
        assert c.subscribe(state_topic("player-2"))[0] == GRANTED_QOS1  # the positive control


@pytest.mark.parametrize(
    ("topic", "retain"),
    [
        ("$CONTROL/dynamic-security/v1", False),
        (state_topic("player-2"), True),  # a retained fake state on the user's own device
        (connection_topic("player-2"), True),
        (responses_topic("player-2"), False),
        (commands_topic("player-3"), False),  # bob's device
        ("$SYS/broker/uptime", True),
    ],
)
def test_a_user_cannot_publish_beyond_commands(
    security_stack: Stack, new_session: Any, topic: str, retain: bool, mqtt_probe: Any
) -> None:
    stack = security_stack
    creds = _session(stack, new_session)
    payload = b'{"commands": [{"command": "createClient", "username": "intruder", "password": "x"}]}'
    with mqtt_probe(stack.brokers[0].app_port, _ca(stack), **creds) as c:
        assert c.connect_rc == 0
        assert c.publish_acked(topic, payload, retain=retain) == NOT_AUTHORIZED
    # Nothing happened: no account was created, no fake state was retained.
    answer = dynsec(stack.brokers[0], [{"command": "getClient", "username": "intruder"}], check=False)[0]
    assert answer.get("error")
    with stack.brokers[0].admin_client() as admin:
        admin.subscribe(state_topic("player-2"))
        retained = admin.receive(timeout=WAIT_S)
        assert retained is not None
        assert retained.payload != payload


def test_a_last_will_cannot_publish_where_its_owner_cannot(
    security_stack: Stack, new_session: Any, mqtt_probe: Any
) -> None:
    stack = security_stack
    port = stack.brokers[0].app_port
    fake = b"attacker's last will"
    with stack.brokers[0].admin_client() as admin:
        admin.subscribe(state_topic("player-2"))
        admin.subscribe(commands_topic("player-2"))
        genuine = admin.receive(timeout=WAIT_S)  # the retained state
        assert genuine is not None
        with mqtt_probe(
            port, _ca(stack), will=(state_topic("player-2"), fake, True), **_session(stack, new_session)
        ) as c:
            assert c.connect_rc == 0
            c.drop()  # an unclean drop: the broker fires the will, if allowed
        # A will the session may publish (its own device's commands topic) is the control:
        # once it arrives, the denied one has had every chance to arrive before it.
        control = b"control will"
        with mqtt_probe(
            port, _ca(stack), will=(commands_topic("player-2"), control, False), **_session(stack, new_session)
        ) as c:
            assert c.connect_rc == 0
            c.drop()
        seen = []
        while (message := admin.receive(timeout=WAIT_S)) is not None:
            seen.append(message.payload)
            if message.payload == control:
                break
        assert control in seen
        assert fake not in seen


def _verify_state(stack: Stack, device_id: str, payload: bytes, content_type: str | None) -> DeviceState:
    key = VerifyKey.from_raw(stack.player(device_id).signing_key.public_key.raw)
    verified = verify_envelope(
        payload, topic=state_topic(device_id), content_type=content_type, key=key, now_ms=now_ms()
    )
    assert isinstance(verified.message, DeviceState)
    return verified.message


async def test_a_stolen_device_certificate_cannot_forge_or_replay_states(
    security_stack: Stack, sdk_client: Any, mqtt_probe: Any
) -> None:
    """The certificate lets the thief publish as the device; clients still refuse what it sends."""
    stack = security_stack
    device = "player-3"
    player = stack.player(device)
    cert = (str(player.directory / "device.pem"), str(player.directory / "device.key"))
    tracker = StateTracker()  # what every client keeps (the SDK holds one)
    with stack.brokers[0].admin_client() as watcher:
        watcher.subscribe(state_topic(device))
        first = await asyncio.to_thread(watcher.receive, timeout=WAIT_S)
        assert first is not None
        captured = (first.payload, first.content_type)
        old = _verify_state(stack, device, *captured)
        assert tracker.observe(device, old.version) is Freshness.NEWER
        # The genuine device moves on (bob changes the volume through the SDK).
        async with sdk_client(stack, "bob") as bob:
            await bob.command(device, SetVolume(volume=(old.volume or 0) % 90 + 5), timeout=WAIT_S)
        newer = None
        while newer is None or newer.version <= old.version:
            message = await asyncio.to_thread(watcher.receive, timeout=WAIT_S)
            assert message is not None, "the device never published its new state"
            newer = _verify_state(stack, device, message.payload, message.content_type)
        assert tracker.observe(device, newer.version) is Freshness.NEWER

        forged_state = DeviceState(
            device_id=device,
            version=newer.version + 1000,
            status=PlaybackStatus.PLAY,
            sampled_at_ms=now_ms(),
            volume=100,
        )
        thief_key = SigningKey.generate()
        forged = Sender(device, thief_key, epoch=1).encode(state_topic(device), forged_state, now_ms=now_ms())
        with mqtt_probe(stack.brokers[0].device_port, _ca(stack), client_id=device, cert=cert) as thief:
            assert thief.connect_rc == 0
            # The certificate's rights are the device's own topics, nothing more.
            assert thief.subscribe(commands_topic("player-1"))[0] == NOT_AUTHORIZED
            assert thief.subscribe("#")[0] == NOT_AUTHORIZED
            assert thief.publish_acked(state_topic("player-1"), forged) == NOT_AUTHORIZED
            # On its own state topic the broker carries what it sends...
            assert thief.publish_acked(state_topic(device), forged) == 0
            assert thief.publish_acked(state_topic(device), captured[0]) == 0
        received: list[Any] = []
        while len(received) < 2:
            message = await asyncio.to_thread(watcher.receive, timeout=WAIT_S)
            assert message is not None
            if message.payload in (forged, captured[0]):
                received.append(message)
        # ...and every client refuses it: the forgery is signed by a key that is not the device's...
        with pytest.raises(UnknownKey):
            _verify_state(stack, device, received[0].payload, received[0].content_type)
        # ...and the replayed genuine state is older than what clients hold.
        replayed = _verify_state(stack, device, received[1].payload, received[1].content_type)
        assert tracker.observe(device, replayed.version) is Freshness.STALE
