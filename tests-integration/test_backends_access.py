"""Backend identities on the real stack (issue #13): what each role's broker credential reaches.

Each backend gets password accounts ``svc.backend.{name}.{n}`` (reserved namespace, client id
bound) and a role from a fixed set; everything else is denied. These tests drive the admin
API, then attack the real brokers (TLS, dynamic security) with the credential and with a
user's session, asserting the broker's own refusals, and run a support backend's command
through a real agent under a grant the authz service signed for it.
"""

from __future__ import annotations

import base64
import secrets
import socket
import ssl
from collections.abc import Iterator
from typing import Any

import pytest

from amora_devtools.broker import dynsec
from amora_devtools.stack import Stack
from amora_protocol import (
    BackendRole,
    Command,
    CommandResponse,
    CommandStatus,
    EncryptionKey,
    Ping,
    Sender,
    SigningKey,
    TopicKind,
    VerifyKey,
    backend_replica_account,
    backend_replica_topic,
    commands_topic,
    now_ms,
    responses_topic,
    shared_subscription,
    verify_envelope,
)

NOT_AUTHORIZED = 0x87
GRANTED_QOS1 = 0x01


@pytest.fixture
def backend(security_stack: Stack, authz_http: Any) -> Iterator[Any]:
    """``backend(role, replicas=2)``: create a backend (deleted afterwards); returns its credential."""
    created: list[str] = []

    def create(role: BackendRole, replicas: int = 2) -> dict[str, Any]:
        name = f"{role.value}-{secrets.token_hex(3)}"
        with authz_http(security_stack, "admin") as http:
            response = http.post("/v1/admin/backends", json={"name": name, "role": role.value, "replicas": replicas})
        assert response.status_code == 201, response.text
        created.append(name)
        return dict(response.json())

    yield create
    with authz_http(security_stack, "admin") as http:
        for name in created:
            http.delete(f"/v1/admin/backends/{name}")


def _mqtt_string(value: str) -> bytes:
    raw = value.encode()
    return len(raw).to_bytes(2, "big") + raw


def _connect_without_certificate(
    context: ssl.SSLContext, port: int, *, username: str, password: str, client_id: str
) -> None:
    """Send a whole MQTT 5 CONNECT with a password over TLS without a client certificate.

    Raises:
        EOFError: the broker closed the connection without a CONNACK.
    """
    variable = b"\x00\x04MQTT\x05\xc2\x00\x1e\x00"  # v5, username + password + clean start, keepalive 30
    body = variable + _mqtt_string(client_id) + _mqtt_string(username) + _mqtt_string(password)
    packet = b"\x10" + bytes([len(body)]) + body  # short enough for a one-byte remaining length
    with (
        socket.create_connection(("127.0.0.1", port), timeout=15) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.sendall(packet)
        if not tls.recv(4):
            raise EOFError


def _login(credential: dict[str, Any], replica: int = 1) -> dict[str, str]:
    username = credential["backend"]["usernames"][replica - 1]
    return {"username": username, "password": credential["password"], "client_id": username}


def test_an_analytics_backend_reads_states_only_through_its_own_share_group(
    security_stack: Stack, backend: Any, mqtt_probe: Any
) -> None:
    stack = security_stack
    broker = stack.brokers[0]
    assert stack.pki is not None
    credential = backend(BackendRole.ANALYTICS)
    name = credential["backend"]["name"]
    with mqtt_probe(broker.app_port, stack.pki.ca_file, **_login(credential)) as probe:
        assert probe.connect_rc == 0
        assert probe.subscribe(shared_subscription(name, TopicKind.STATE)) == [GRANTED_QOS1]
        assert probe.subscribe(shared_subscription(name, TopicKind.CONNECTION)) == [GRANTED_QOS1]
        for refused in (
            "amora/devices/+/state",  # a plain fleet-wide subscription: the share group is the only way in
            "amora/devices/player-1/state",
            "$share/other-group/amora/devices/+/state",  # another backend's group
            f"$share/{name}/amora/devices/+/commands",
            f"$share/{name}/amora/devices/+/responses",  # ingest's, not analytics'
            f"$share/{name}/amora/devices/+/sessions",
            "#",
            "$SYS/#",
            "$CONTROL/dynamic-security/#",
        ):
            assert probe.subscribe(refused) == [NOT_AUTHORIZED], refused
        # It may not publish on device topics: a forged retained state never reaches its own
        # share group, while its presence message (allowed) published after it does.
        presence = backend_replica_topic(name, 1)
        assert probe.subscribe(presence) == [GRANTED_QOS1]
        probe.publish("amora/devices/player-3/state", b"forged")
        probe.publish(commands_topic("player-3"), b"forged")
        probe.publish(presence, b"up")
        assert probe.wait_message(lambda m: m.topic == presence) is not None
        assert not [m for m in probe.messages if m.payload == b"forged"]
        # mosquitto 2.0 sends the retained states and statuses to each new shared subscriber
        # (not split between the group): every one of them is a genuine device's.
        assert {m.topic.rsplit("/", 1)[1] for m in probe.messages if m.topic.startswith("amora/devices/")} <= {
            "state",
            "connection",
        }


def test_a_backend_credential_never_works_on_the_device_listener_or_with_another_client_id(
    security_stack: Stack, backend: Any, mqtt_probe: Any
) -> None:
    stack = security_stack
    broker = stack.brokers[0]
    assert stack.pki is not None
    credential = backend(BackendRole.SUPPORT)
    login = _login(credential)
    # The device listener takes certificates only: the full CONNECT with the backend's
    # username and password never gets a CONNACK (the TLS alert, a reset or EOF instead).
    context = ssl.create_default_context(cafile=str(stack.pki.ca_file))
    with pytest.raises((ssl.SSLError, ConnectionResetError, EOFError)):
        _connect_without_certificate(context, broker.device_port, **login)
    # Each slot is bound to its own client id: a device's id (which would kick the device)
    # or another slot's id is refused.
    for client_id in ("player-1", credential["backend"]["usernames"][1]):
        with mqtt_probe(broker.app_port, stack.pki.ca_file, **(login | {"client_id": client_id})) as probe:
            assert probe.connect_rc == NOT_AUTHORIZED, client_id


def test_a_user_session_cannot_use_share_to_read_foreign_devices(
    security_stack: Stack, backend: Any, new_session: Any, mqtt_probe: Any
) -> None:
    stack = security_stack
    assert stack.pki is not None
    name = backend(BackendRole.ANALYTICS)["backend"]["name"]
    session = new_session(stack, "alice")  # player-1 and player-2; player-3 is bob's
    creds = session["broker"]
    with mqtt_probe(
        stack.brokers[0].app_port,
        stack.pki.ca_file,
        username=creds["username"],
        password=creds["password"],
        client_id=creds["client_id"],
    ) as probe:
        assert probe.connect_rc == 0
        for topic in (
            shared_subscription(name, TopicKind.STATE),  # the backend's own group
            "$share/alice/amora/devices/+/state",
            "$share/alice/amora/devices/player-3/state",
            "$share/alice/amora/devices/player-1/state",  # even her own device: no $share at all
            "$share/alice/#",
        ):
            assert probe.subscribe(topic) == [NOT_AUTHORIZED], topic


def test_rotation_and_deletion_cut_the_old_credential_on_every_broker(
    security_stack: Stack, backend: Any, authz_http: Any, mqtt_probe: Any
) -> None:
    stack = security_stack
    assert stack.pki is not None
    credential = backend(BackendRole.INGEST, replicas=1)
    name = credential["backend"]["name"]
    with authz_http(security_stack, "admin") as http:
        rotated = http.post(f"/v1/admin/backends/{name}/rotate")
        assert rotated.status_code == 200, rotated.text
        new = rotated.json()
        assert new["password"] != credential["password"]
        assert new["backend"]["generation"] == 2
        for broker in stack.brokers:
            with mqtt_probe(broker.app_port, stack.pki.ca_file, **_login(credential)) as old:
                assert old.connect_rc == NOT_AUTHORIZED, broker.name
            with mqtt_probe(broker.app_port, stack.pki.ca_file, **_login(new)) as fresh:
                assert fresh.connect_rc == 0, broker.name
                assert fresh.subscribe(shared_subscription(name, TopicKind.RESPONSES)) == [GRANTED_QOS1]
                assert fresh.subscribe(shared_subscription(name, TopicKind.STATE)) == [NOT_AUTHORIZED]
        # The accounts carry the ownership marker and live in the reserved namespace.
        account = dynsec(stack.brokers[0], [{"command": "getClient", "username": backend_replica_account(name, 1)}])
        assert account[0]["data"]["client"]["textname"] == "managed-by:amora-authz"
        assert http.delete(f"/v1/admin/backends/{name}").status_code == 204
        assert http.get(f"/v1/admin/backends/{name}").status_code == 404
    for broker in stack.brokers:
        with mqtt_probe(broker.app_port, stack.pki.ca_file, **_login(new)) as gone:
            assert gone.connect_rc == NOT_AUTHORIZED, broker.name


def test_a_backend_name_held_by_a_foreign_broker_object_is_refused(security_stack: Stack, authz_http: Any) -> None:
    name = f"taken-{secrets.token_hex(3)}"
    foreign = backend_replica_account(name, 1)
    dynsec(
        security_stack.brokers[0],
        [{"command": "createClient", "username": foreign, "password": secrets.token_hex(8), "textname": "operator"}],
    )
    try:
        with authz_http(security_stack, "admin") as http:
            response = http.post("/v1/admin/backends", json={"name": name, "role": "analytics"})
            assert response.status_code == 409
            assert response.json()["code"] == "name_taken_on_broker"
            assert foreign in response.json()["message"]
            for bad, code in (("Has.Dots", "invalid_backend_name"), ("ok-name", "invalid_backend_role")):
                role = "analytics" if code == "invalid_backend_name" else "root"
                refused = http.post("/v1/admin/backends", json={"name": bad, "role": role})
                assert refused.status_code == 422
                assert refused.json()["code"] == code
        # Untouched: still the operator's.
        client = dynsec(security_stack.brokers[0], [{"command": "getClient", "username": foreign}])
        assert client[0]["data"]["client"]["textname"] == "operator"
    finally:
        dynsec(security_stack.brokers[0], [{"command": "deleteClient", "username": foreign}], check=False)


def test_a_support_backend_commands_any_device_under_its_grant_until_deleted(
    security_stack: Stack, backend: Any, authz_http: Any, mqtt_probe: Any
) -> None:
    stack = security_stack
    assert stack.pki is not None
    credential = backend(BackendRole.SUPPORT)
    name = credential["backend"]["name"]
    login = _login(credential)
    basic = base64.b64encode(f"{login['username']}:{login['password']}".encode()).decode()
    signing, encryption = SigningKey.generate(), EncryptionKey.generate()
    device = "player-3"  # bob's: nothing links it to the backend
    with authz_http(security_stack) as http:
        # Device keys: any backend; wrong password refused with its code.
        keys = http.get("/v1/backend/devices", headers={"Authorization": f"Basic {basic}"})
        assert keys.status_code == 200, keys.text
        assert device in [d["device_id"] for d in keys.json()["devices"]]
        wrong = base64.b64encode(f"{login['username']}:nope".encode()).decode()
        assert http.get("/v1/backend/devices", headers={"Authorization": f"Basic {wrong}"}).status_code == 401
        issued = http.post(
            "/v1/backend/grants",
            headers={"Authorization": f"Basic {basic}"},
            json={
                "signing_key": base64.b64encode(signing.public_key.raw).decode(),
                "encryption_key": base64.b64encode(encryption.public_key.raw).decode(),
                "devices": [device],
            },
        )
        assert issued.status_code == 201, issued.text
    grant = base64.b64decode(issued.json()["grant"])
    device_key = VerifyKey.from_raw(base64.b64decode(issued.json()["devices"][0]["signing_key"]))
    sender = Sender(issued.json()["session_id"], signing, epoch=now_ms())

    def command_outcome(probe: Any) -> CommandResponse:
        issued_at = now_ms()
        command = Command(
            id=secrets.token_hex(8), issued_at_ms=issued_at, expires_at_ms=issued_at + 10_000, action=Ping()
        )
        probe.messages.clear()
        probe.publish(
            commands_topic(device), sender.encode(commands_topic(device), command, now_ms=issued_at, grant=grant)
        )
        message = probe.wait_message(lambda m: m.topic == responses_topic(device))
        assert message is not None, "no response from the agent"
        content_type = getattr(message.properties, "ContentType", None)
        verified = verify_envelope(
            message.payload, topic=message.topic, content_type=content_type, key=device_key, now_ms=now_ms()
        ).message
        assert isinstance(verified, CommandResponse)
        assert verified.command_id == command.id
        return verified

    with mqtt_probe(stack.brokers[0].app_port, stack.pki.ca_file, **login) as probe:
        assert probe.connect_rc == 0
        assert probe.subscribe(shared_subscription(name, TopicKind.RESPONSES)) == [GRANTED_QOS1]
        assert command_outcome(probe).status is CommandStatus.SUCCEEDED
    # Deleted: the device's session list drops the backend, so the same grant (still within
    # its expiry, relayed through any connection) is refused at the device.
    with authz_http(security_stack, "admin") as http:
        assert http.delete(f"/v1/admin/backends/{name}").status_code == 204
        relay = backend(BackendRole.SUPPORT)
    with mqtt_probe(stack.brokers[0].app_port, stack.pki.ca_file, **_login(relay)) as probe:
        assert probe.connect_rc == 0
        assert probe.subscribe(shared_subscription(relay["backend"]["name"], TopicKind.RESPONSES)) == [GRANTED_QOS1]
        refused = command_outcome(probe)
        assert refused.status is CommandStatus.REJECTED
        assert "revoked" in (refused.message or "")
