"""Security suite: every malformed-envelope class against a real agent.

An attacker with a user's broker credential may publish on the commands topic of the
user's device; what it publishes must still be signed by a session key that an authz
grant names, for that device, on that topic, in time, once. Each class below is sent
to player-2's agent through the broker and answered with a specific reject reason
(read from the device's signed response), while a well-formed command is the control.
"""

from __future__ import annotations

import base64
import secrets
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from amora_devtools.stack import Stack
from amora_protocol import (
    DEFAULT_MAX_SIZE,
    Codec,
    Command,
    CommandResponse,
    CommandStatus,
    EncryptionKey,
    Ping,
    RejectReason,
    Right,
    Sender,
    SigningKey,
    VerifyKey,
    commands_topic,
    issue_grant,
    now_ms,
    responses_topic,
    verify_envelope,
)
from amora_protocol import Grant as GrantMessage

DEVICE = "player-2"  # alice's
WAIT_S = 15.0


@dataclass
class Attacker:
    """A session of alice's: its keys, grant and broker credential."""

    session: dict[str, Any]
    key: SigningKey
    grant: bytes
    sender: Sender

    def command(self, **overrides: Any) -> tuple[str, Command]:
        now = now_ms()
        command_id = overrides.pop("id", f"atk-{uuid.uuid4().hex[:12]}")
        fields = {"id": command_id, "issued_at_ms": now, "expires_at_ms": now + 30_000, "action": Ping()}
        return command_id, Command(**(fields | overrides))


def _session(stack: Stack, user: str) -> tuple[dict[str, Any], SigningKey]:
    token = httpx.post(f"{stack.authz_url}/dev-issuer/token", json={"username": user}, timeout=10).json()
    key = SigningKey.generate()
    body = {
        "signing_key": base64.b64encode(key.public_key.raw).decode(),
        "encryption_key": base64.b64encode(EncryptionKey.generate().public_key.raw).decode(),
    }
    response = httpx.post(
        f"{stack.authz_url}/v1/sessions",
        json=body,
        headers={"Authorization": f"Bearer {token['access_token']}"},
        timeout=10,
    )
    response.raise_for_status()
    return response.json(), key


@pytest.fixture(scope="module")
def attacker(security_stack: Stack) -> Attacker:
    session, key = _session(security_stack, "alice")
    grant = base64.b64decode(session["grant"])
    return Attacker(session, key, grant, Sender(session["session_id"], key, epoch=secrets.randbits(63)))


@pytest.fixture
def probe(security_stack: Stack, attacker: Attacker, mqtt_probe: Any) -> Iterator[Any]:
    creds = attacker.session["broker"]
    assert security_stack.pki is not None
    with mqtt_probe(security_stack.brokers[0].app_port, security_stack.pki.ca_file, session=creds) as p:
        assert p.connect_rc == 0
        assert p.subscribe(responses_topic(DEVICE))[0] < 0x80
        yield p


def _answer(
    stack: Stack, probe: Any, payload: bytes, *, command_id: str | None, content_type: str = Codec.MSGPACK.value
) -> CommandResponse:
    """Publish ``payload`` on the device's commands topic; return the device's verified answer."""
    seen = len(probe.messages)
    probe.publish(commands_topic(DEVICE), payload, content_type=content_type)
    key = VerifyKey.from_raw(stack.player(DEVICE).signing_key.public_key.raw)

    def answered(message: Any) -> bool:
        return message in probe.messages[seen:]

    message = probe.wait_message(answered, timeout=WAIT_S)
    assert message is not None, "the agent did not answer"
    content = getattr(message.properties, "ContentType", None)
    verified = verify_envelope(
        message.payload, topic=responses_topic(DEVICE), content_type=content, key=key, now_ms=now_ms()
    )
    response = verified.message
    assert isinstance(response, CommandResponse)
    if command_id is not None:
        assert response.command_id == command_id
    return response


def _rejected(response: CommandResponse, reason: RejectReason) -> None:
    assert response.status is CommandStatus.REJECTED, response
    assert response.reason is reason, response


def test_the_well_formed_command_is_the_control(security_stack: Stack, attacker: Attacker, probe: Any) -> None:
    _, command = attacker.command()
    payload = attacker.sender.encode(commands_topic(DEVICE), command, now_ms=now_ms(), grant=attacker.grant)
    assert _answer(security_stack, probe, payload, command_id=command.id).status is CommandStatus.SUCCEEDED
    # The same envelope again: a replay, answered as a duplicate and not run twice.
    again = _answer(security_stack, probe, payload, command_id=command.id)
    assert again.status is CommandStatus.SUCCEEDED
    assert again.duplicate


def test_garbage_is_invalid(security_stack: Stack, probe: Any) -> None:
    _rejected(_answer(security_stack, probe, b"\x00not an envelope", command_id=None), RejectReason.INVALID)


def test_an_oversized_envelope_is_invalid(security_stack: Stack, probe: Any) -> None:
    _rejected(
        _answer(security_stack, probe, b"\x92" + b"x" * (DEFAULT_MAX_SIZE + 1), command_id=None), RejectReason.INVALID
    )


def test_a_command_without_a_grant_is_unauthorized(security_stack: Stack, attacker: Attacker, probe: Any) -> None:
    _, command = attacker.command()
    payload = attacker.sender.encode(commands_topic(DEVICE), command, now_ms=now_ms())
    _rejected(_answer(security_stack, probe, payload, command_id=None), RejectReason.UNAUTHORIZED)


def test_a_key_the_grant_does_not_name_is_unauthorized(security_stack: Stack, attacker: Attacker, probe: Any) -> None:
    """alice's genuine grant, but the envelope is signed by another key (a stolen grant)."""
    _, command = attacker.command()
    thief = Sender(attacker.session["session_id"], SigningKey.generate(), epoch=secrets.randbits(63))
    payload = thief.encode(commands_topic(DEVICE), command, now_ms=now_ms(), grant=attacker.grant)
    _rejected(_answer(security_stack, probe, payload, command_id=None), RejectReason.UNAUTHORIZED)


def test_a_grant_not_signed_by_authz_is_unauthorized(security_stack: Stack, attacker: Attacker, probe: Any) -> None:
    """A self-made grant naming the attacker's key and the device, signed by a key authz never had."""
    now = now_ms()
    forged = issue_grant(
        GrantMessage(
            grant_id=str(uuid.uuid4()),
            subject="alice",
            session_id=attacker.session["session_id"],
            signing_key=attacker.key.public_key.raw,
            encryption_key=EncryptionKey.generate().public_key.raw,
            devices=(DEVICE,),
            rights=(Right.WATCH, Right.CONTROL),
            issued_at_ms=now,
            expires_at_ms=now + 3_600_000,
        ),
        SigningKey.generate(),
    )
    _, command = attacker.command()
    payload = attacker.sender.encode(commands_topic(DEVICE), command, now_ms=now, grant=forged)
    _rejected(_answer(security_stack, probe, payload, command_id=None), RejectReason.UNAUTHORIZED)


def test_a_grant_for_other_devices_is_unauthorized(security_stack: Stack, probe: Any) -> None:
    """carol's genuine grant names no device: relayed through alice's credential, it opens nothing."""
    session, key = _session(security_stack, "carol")
    sender = Sender(session["session_id"], key, epoch=secrets.randbits(63))
    now = now_ms()
    command = Command(id=f"atk-{uuid.uuid4().hex[:12]}", issued_at_ms=now, expires_at_ms=now + 30_000, action=Ping())
    payload = sender.encode(commands_topic(DEVICE), command, now_ms=now, grant=base64.b64decode(session["grant"]))
    _rejected(_answer(security_stack, probe, payload, command_id=None), RejectReason.UNAUTHORIZED)


def test_an_envelope_signed_for_another_topic_is_unauthorized(
    security_stack: Stack, attacker: Attacker, probe: Any
) -> None:
    """A command alice signed for player-1, moved to player-2's topic: the topic is in the signed bytes."""
    _, command = attacker.command()
    payload = attacker.sender.encode(commands_topic("player-1"), command, now_ms=now_ms(), grant=attacker.grant)
    _rejected(_answer(security_stack, probe, payload, command_id=None), RejectReason.UNAUTHORIZED)


def test_a_tampered_envelope_is_unauthorized(security_stack: Stack, attacker: Attacker, probe: Any) -> None:
    _, command = attacker.command()
    payload = bytearray(attacker.sender.encode(commands_topic(DEVICE), command, now_ms=now_ms(), grant=attacker.grant))
    payload[-1] ^= 0x01  # the last byte of the signature
    _rejected(_answer(security_stack, probe, bytes(payload), command_id=None), RejectReason.UNAUTHORIZED)


def test_an_expired_command_is_expired(security_stack: Stack, attacker: Attacker, probe: Any) -> None:
    """A captured command held back past its expiry (sent with a current header)."""
    now = now_ms()
    _, command = attacker.command(issued_at_ms=now - 5_000, expires_at_ms=now - 4_000)
    payload = attacker.sender.encode(commands_topic(DEVICE), command, now_ms=now, grant=attacker.grant)
    _rejected(_answer(security_stack, probe, payload, command_id=None), RejectReason.EXPIRED)


def test_a_command_sent_far_outside_the_clock_allowance_is_clock_skew(
    security_stack: Stack, attacker: Attacker, probe: Any
) -> None:
    """An old capture re-sent with its old header: dated two minutes ago, beyond the allowance."""
    then = now_ms() - 120_000
    _, command = attacker.command(issued_at_ms=then, expires_at_ms=then + 30_000)
    payload = attacker.sender.encode(commands_topic(DEVICE), command, now_ms=then, grant=attacker.grant)
    _rejected(_answer(security_stack, probe, payload, command_id=None), RejectReason.CLOCK_SKEW)


def test_a_command_dated_in_the_future_is_clock_skew(security_stack: Stack, attacker: Attacker, probe: Any) -> None:
    later = now_ms() + 3_600_000
    _, command = attacker.command(issued_at_ms=later, expires_at_ms=later + 30_000)
    payload = attacker.sender.encode(commands_topic(DEVICE), command, now_ms=later, grant=attacker.grant)
    _rejected(_answer(security_stack, probe, payload, command_id=command.id), RejectReason.CLOCK_SKEW)


def test_a_replayed_sequence_with_a_new_id_is_invalid(security_stack: Stack, attacker: Attacker, probe: Any) -> None:
    """An old (sender, epoch, seq) with a fresh command id: never run, and not a duplicate either."""
    old = Sender(attacker.session["session_id"], attacker.key, epoch=secrets.randbits(63), first_seq=100)
    first_id, first = attacker.command()
    payload = old.encode(commands_topic(DEVICE), first, now_ms=now_ms(), grant=attacker.grant)
    assert _answer(security_stack, probe, payload, command_id=first_id).status is CommandStatus.SUCCEEDED
    reused = Sender(attacker.session["session_id"], attacker.key, epoch=old.epoch, first_seq=100)
    second_id, second = attacker.command()
    payload = reused.encode(commands_topic(DEVICE), second, now_ms=now_ms(), grant=attacker.grant)
    _rejected(_answer(security_stack, probe, payload, command_id=second_id), RejectReason.INVALID)


def test_a_json_envelope_under_the_msgpack_content_type_is_invalid(
    security_stack: Stack, attacker: Attacker, probe: Any
) -> None:
    _, command = attacker.command()
    payload = attacker.sender.encode(
        commands_topic(DEVICE), command, now_ms=now_ms(), grant=attacker.grant, codec=Codec.JSON
    )
    _rejected(_answer(security_stack, probe, payload, command_id=None), RejectReason.INVALID)
