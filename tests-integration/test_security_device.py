"""Device-side security on the real stack (issue #11 items 4, 5 and 8).

Brokers with TLS and dynamic security, the authz service and the agents run as real
processes; the attacker here holds a user's session credential and the private key of a
session that was logged out or unlinked, and relays through a connection that is still valid.
Each case asserts the agent's specific refusal.
"""

from __future__ import annotations

import base64
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx

from amora_devtools import MqttClient, client_ssl_context
from amora_protocol import (
    Codec,
    Command,
    CommandResponse,
    CommandStatus,
    EncryptionKey,
    Ping,
    ProtocolError,
    RejectReason,
    Sender,
    SessionList,
    SigningKey,
    commands_topic,
    keyring,
    responses_topic,
    sessions_topic,
    verify_envelope,
    verify_session_list,
)

if TYPE_CHECKING:
    from amora_devtools.stack import Stack

WAIT_S = 15.0
DEVICE = "player-2"  # alice's simulated player


@dataclass
class AppSession:
    """A session made through the HTTP API, with the private key its app holds."""

    user: str
    token: str
    session_id: str
    key: SigningKey
    grant: bytes
    creds: dict[str, str]
    sender: Sender = field(init=False)

    def __post_init__(self) -> None:
        self.sender = Sender(self.session_id, self.key, epoch=int(time.time() * 1000))

    def command(self, device_id: str) -> tuple[Command, bytes]:
        now = int(time.time() * 1000)
        command = Command(id=str(uuid.uuid4()), issued_at_ms=now, expires_at_ms=now + 60_000, action=Ping())
        return command, self.sender.encode(commands_topic(device_id), command, now_ms=now, grant=self.grant)


def _token(stack: Stack, user: str) -> str:
    response = httpx.post(f"{stack.authz_url}/dev-issuer/token", json={"username": user}, timeout=10)
    response.raise_for_status()
    return str(response.json()["access_token"])


def _session(stack: Stack, user: str) -> AppSession:
    token = _token(stack, user)
    key = SigningKey.generate()
    body = {
        "signing_key": base64.b64encode(key.public_key.raw).decode(),
        "encryption_key": base64.b64encode(EncryptionKey.generate().public_key.raw).decode(),
    }
    response = httpx.post(
        f"{stack.authz_url}/v1/sessions", json=body, headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    response.raise_for_status()
    data = response.json()
    return AppSession(user, token, data["session_id"], key, base64.b64decode(data["grant"]), data["broker"])


def _connect(stack: Stack, session: AppSession) -> MqttClient:
    broker = stack.brokers[0]
    return MqttClient.connect(
        broker.host,
        broker.app_port,
        ssl_context=client_ssl_context(broker.ca_file),
        client_id=session.creds["client_id"],
        username=session.creds["username"],
        password=session.creds["password"],
    )


def _admin(stack: Stack, method: str, path: str) -> httpx.Response:
    token = _token(stack, "admin")
    return httpx.request(method, f"{stack.authz_url}{path}", headers={"Authorization": f"Bearer {token}"}, timeout=10)


def _trusted(stack: Stack) -> dict[str, Any]:
    from amora_protocol import VerifyKey

    return keyring(VerifyKey.from_raw(base64.b64decode(k)) for k in stack.authz_keys())


def _responses(stack: Stack, client: MqttClient, until_id: str) -> list[tuple[CommandResponse, bytes | None]]:
    """Every verified response on DEVICE's topic up to and including the one for ``until_id``."""
    key = stack.player(DEVICE).signing_key.public_key
    seen: list[tuple[CommandResponse, bytes | None]] = []
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        message = client.receive(timeout=max(deadline - time.monotonic(), 0.05))
        if message is None or message.topic != responses_topic(DEVICE):
            continue
        response = verify_envelope(
            message.payload,
            topic=message.topic,
            content_type=message.content_type,
            key=key,
            now_ms=int(time.time() * 1000),
        ).message
        assert isinstance(response, CommandResponse)
        seen.append((response, message.correlation_data))
        if response.command_id == until_id:
            return seen
    raise AssertionError(f"no response for {until_id} within {WAIT_S}s; saw {seen}")


def _answer(stack: Stack, client: MqttClient, command_id: str) -> CommandResponse:
    return _responses(stack, client, command_id)[-1][0]


def _wait_list(stack: Stack, watcher: MqttClient, predicate: Any) -> SessionList:
    """Wait until the broker routed a session list for DEVICE that satisfies ``predicate``.

    The broker queues it to the device before anything published after it: a command sent
    once this returns reaches the agent after the list.
    """
    trusted = _trusted(stack)
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        message = watcher.receive(timeout=max(deadline - time.monotonic(), 0.05))
        if message is None or message.topic != sessions_topic(DEVICE):
            continue
        try:
            found = verify_session_list(message.payload, trusted, device_id=DEVICE)
        except ProtocolError:
            continue
        if predicate(found):
            return found
    raise AssertionError(f"no matching session list for {DEVICE} within {WAIT_S}s")


def _relay(stack: Stack, relay: MqttClient, session: AppSession) -> tuple[Command, CommandResponse]:
    """Send a command under ``session``'s grant through the ``relay`` connection; its answer."""
    command, payload = session.command(DEVICE)
    relay.publish(commands_topic(DEVICE), payload, qos=1, content_type=Codec.MSGPACK.value)
    return command, _answer(stack, relay, command.id)


def _assert_revoked(answer: CommandResponse, command: Command, session: AppSession) -> None:
    assert (answer.command_id, answer.status, answer.reason) == (
        command.id,
        CommandStatus.REJECTED,
        RejectReason.UNAUTHORIZED,
    )
    assert answer.message is not None
    assert answer.message.startswith(f"revoked: session {session.session_id!r}")


def test_a_logged_out_grant_relayed_through_a_live_session_is_refused_as_revoked(stack: Stack) -> None:
    old, live = _session(stack, "alice"), _session(stack, "alice")
    with stack.brokers[0].admin_client() as watcher, _connect(stack, live) as relay:
        assert watcher.subscribe(sessions_topic(DEVICE)) < 0x80
        assert relay.subscribe(responses_topic(DEVICE)) < 0x80
        _wait_list(stack, watcher, lambda s: s.allows(old.session_id) and s.allows(live.session_id))
        # The relay works while the old session is live: the old grant runs through `live`.
        assert _relay(stack, relay, old)[1].status is CommandStatus.SUCCEEDED

        logout = httpx.delete(
            f"{stack.authz_url}/v1/sessions/{old.session_id}",
            headers={"Authorization": f"Bearer {old.token}"},
            timeout=10,
        )
        assert logout.status_code == 204
        _wait_list(stack, watcher, lambda s: not s.allows(old.session_id))

        # The old grant has not expired, its signature is good, the relay may publish: revoked.
        command, answer = _relay(stack, relay, old)
        _assert_revoked(answer, command, old)
        # The still-valid session is untouched.
        assert _relay(stack, relay, live)[1].status is CommandStatus.SUCCEEDED


def test_an_unlinked_users_grant_relayed_through_another_users_session_is_refused(stack: Stack) -> None:
    assert _admin(stack, "PUT", f"/v1/admin/users/carol/devices/{DEVICE}").status_code in (200, 201)
    alice, carol = _session(stack, "alice"), _session(stack, "carol")
    with stack.brokers[0].admin_client() as watcher, _connect(stack, carol) as relay:
        assert watcher.subscribe(sessions_topic(DEVICE)) < 0x80
        assert relay.subscribe(responses_topic(DEVICE)) < 0x80
        _wait_list(stack, watcher, lambda s: s.allows(alice.session_id) and s.allows(carol.session_id))
        assert _relay(stack, relay, alice)[1].status is CommandStatus.SUCCEEDED

        assert _admin(stack, "DELETE", f"/v1/admin/users/alice/devices/{DEVICE}").status_code == 204
        _wait_list(stack, watcher, lambda s: not s.allows(alice.session_id))

        command, answer = _relay(stack, relay, alice)  # the grant still lists the device
        _assert_revoked(answer, command, alice)
        assert _relay(stack, relay, carol)[1].status is CommandStatus.SUCCEEDED


def _retained_command(stack: Stack) -> bytes | None:
    """The retained message on DEVICE's commands topic, read as the admin (None: there is none).

    Subscribing to the commands topic and then to the sessions topic (which always holds a
    retained list): mosquitto answers the two SUBSCRIBEs in order, so once the list is
    there, a retained command would have come before it.
    """
    with stack.brokers[0].admin_client() as admin:
        admin.subscribe(commands_topic(DEVICE))
        admin.subscribe(sessions_topic(DEVICE))
        found: bytes | None = None
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            message = admin.receive(timeout=max(deadline - time.monotonic(), 0.05))
            if message is None:
                continue
            if message.topic == commands_topic(DEVICE) and message.retain:
                found = message.payload
            if message.topic == sessions_topic(DEVICE):
                return found
    raise AssertionError("the retained session list never came")


def _publish_retained(stack: Stack, writer: AppSession, watch: AppSession) -> tuple[Command, bytes]:
    """Publish a retained command as ``writer`` and see the broker keep it.

    Every publish of the device's session list clears its retained command (the authz service
    sends one after API changes, and again on its periodic pass after its connection to the
    broker was re-made). When the command is gone and a list came in between, that explains
    it: publish again (bounded). Gone with no list: the broker lost it, and the test fails.
    """
    with stack.brokers[0].admin_client() as watcher:
        assert watcher.subscribe(sessions_topic(DEVICE)) < 0x80
        _wait_list(stack, watcher, lambda s: s.allows(writer.session_id) and s.allows(watch.session_id))
        for _ in range(5):
            with _connect(stack, writer) as conn:
                retained, payload = writer.command(DEVICE)
                conn.publish(commands_topic(DEVICE), payload, qos=1, retain=True)
            if _retained_command(stack) == payload:  # the broker keeps it: dynsec cannot forbid retain
                return retained, payload
            message = watcher.receive(timeout=WAIT_S)
            assert message is not None, "the retained command vanished and no session list explains it"
            assert message.topic == sessions_topic(DEVICE)
    raise AssertionError("the retained command was cleared by a session list five times in a row")


def test_a_retained_command_never_reaches_the_agent_and_is_cleared_at_logout(stack: Stack) -> None:
    writer, watch = _session(stack, "alice"), _session(stack, "alice")
    retained, _ = _publish_retained(stack, writer, watch)

    with _connect(stack, watch) as observer:
        assert observer.subscribe(responses_topic(DEVICE)) < 0x80
        # A fresh agent process subscribes anew: the broker hands it the retained command.
        player = stack.player(DEVICE)
        assert player.process is not None
        player.process.stop()
        stack.start_agent(player)
        stack.wait_online([DEVICE])
        # A marker command after the restart: its answer comes after anything about the
        # retained one (delivered right after the SUBACK, before the agent said online).
        marker, marker_payload = watch.command(DEVICE)
        observer.publish(commands_topic(DEVICE), marker_payload, qos=1, content_type=Codec.MSGPACK.value)
        seen = _responses(stack, observer, marker.id)
        assert seen[-1][0].status is CommandStatus.SUCCEEDED
        # Not run, not answered (not even as a duplicate of the live delivery before it).
        assert all(response.command_id != retained.id for response, _ in seen)

    logout = httpx.delete(
        f"{stack.authz_url}/v1/sessions/{writer.session_id}",
        headers={"Authorization": f"Bearer {writer.token}"},
        timeout=10,
    )
    assert logout.status_code == 204
    # The writer's session is over: the authz service cleared its leftover.
    assert _retained_command(stack) is None


def test_garbage_is_answered_at_a_bounded_rate_and_never_echoed(stack: Stack) -> None:
    session = _session(stack, "alice")
    with _connect(stack, session) as conn:
        assert conn.subscribe(responses_topic(DEVICE)) < 0x80
        flood = 100
        for n in range(flood):
            conn.publish(
                commands_topic(DEVICE),
                b"garbage-%d" % n,
                qos=1,
                content_type=Codec.MSGPACK.value,
                correlation_data=b"echo-me-%d" % n,
            )
        marker, payload = session.command(DEVICE)
        conn.publish(commands_topic(DEVICE), payload, qos=1, content_type=Codec.MSGPACK.value)
        seen = _responses(stack, conn, marker.id)
    garbage = [(r, c) for r, c in seen if r.command_id != marker.id]
    # Refused before authentication: the agent's budget (burst 5 per claimed sender, then
    # 1/s) answers a handful, each by a digest of the payload, never the correlation data.
    assert 1 <= len(garbage) <= 10, len(garbage)
    for response, correlation in garbage:
        assert (response.status, response.reason) == (CommandStatus.REJECTED, RejectReason.INVALID)
        assert response.command_id.startswith("unauthenticated:")
        assert response.message == "refused before authentication: SchemaError"
        assert correlation == response.command_id.encode()
        assert b"echo-me" not in correlation
