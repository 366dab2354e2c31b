"""What every vector shares: fixed keys and times, and the builders of grants, commands and envelopes.

Keys come from fixed seeds and every time is fixed, so that what is built here repeats byte for
byte (Ed25519 is deterministic).
"""

from __future__ import annotations

import json
from typing import Any

import msgspec

import amora_protocol as ap

__all__ = [
    "AUTHZ_KEY",
    "DEVICE",
    "DEVICE_ENC",
    "DEVICE_KEY",
    "NOW",
    "OTHER_ENC",
    "OTHER_KEY",
    "SESSION",
    "SESSION_KEY",
    "flip",
    "make_command",
    "make_envelope",
    "make_grant",
    "make_vector",
    "resign",
]

NOW = 1_790_000_000_000  # 2026-09-21T...Z, the verification time of every vector
DEVICE = "player-0001"
SESSION = "sess-0123456789abcdef"


def _key(seed: int) -> ap.SigningKey:
    return ap.SigningKey.from_raw(bytes([seed]) * 32)


DEVICE_KEY = _key(1)
SESSION_KEY = _key(2)
AUTHZ_KEY = _key(3)
OTHER_KEY = _key(4)
DEVICE_ENC = ap.EncryptionKey.from_raw(bytes([5]) * 32)


OTHER_ENC = ap.EncryptionKey.from_raw(bytes([6]) * 32)


def make_grant(key: ap.SigningKey = AUTHZ_KEY, **changes: object) -> bytes:
    """The session's grant, or (``changes``) one broken in a single way."""
    grant = ap.Grant(
        grant_id="grant-1",
        subject="user-alice",
        session_id=SESSION,
        signing_key=SESSION_KEY.public_key.raw,
        devices=(DEVICE,),
        rights=(ap.Right.WATCH, ap.Right.CONTROL),
        issued_at_ms=NOW - 60_000,
        expires_at_ms=NOW + 3_600_000,
    )
    return ap.issue_grant(msgspec.structs.replace(grant, **changes), key)


def make_command(action: ap.Action, n: int) -> ap.Command:
    return ap.Command(
        id=f"0190a000-0000-7000-8000-{n:012d}",
        issued_at_ms=NOW - 100,
        expires_at_ms=NOW + 30_000,
        action=action,
    )


def make_envelope(  # noqa: PLR0913
    topic: str,
    message: ap.Message,
    key: ap.SigningKey,
    sender: str,
    *,
    seq: int,
    codec: ap.Codec = ap.Codec.MSGPACK,
    grant: bytes | None = None,
    seal_to: ap.EncryptionPublicKey | None = None,
    expires_at_ms: int | None = None,
) -> bytes:
    if expires_at_ms is None and isinstance(message, ap.Command):
        expires_at_ms = message.expires_at_ms
    return ap.encode_envelope(
        topic,
        message,
        signing_key=key,
        sender=sender,
        epoch=0x1234_5678_9ABC,
        seq=seq,
        now_ms=NOW - 100,
        expires_at_ms=expires_at_ms,
        grant=grant,
        codec=codec,
        seal_to=seal_to,
    )


def make_vector(  # noqa: PLR0913
    name: str,
    topic: str,
    payload: bytes,
    signer: ap.SigningKey,
    expect: str,
    *,
    codec: ap.Codec = ap.Codec.MSGPACK,
    message: ap.Message | None = None,
    **extra: str | int | bool,
) -> dict[str, Any]:
    vector: dict[str, Any] = {
        "name": name,
        "topic": topic,
        "content_type": codec.value,
        "envelope_hex": payload.hex(),
        "signer_public_key_hex": signer.public_key.raw.hex(),
        "signer_private_key_hex": signer.to_raw().hex(),
        "expect": expect,
        "now": NOW,
    }
    if message is not None:
        vector["message"] = json.loads(msgspec.json.encode(message))
    vector.update(extra)
    return vector


def flip(payload: bytes, index: int) -> bytes:
    return payload[:index] + bytes([payload[index] ^ 0x01]) + payload[index + 1 :]


def resign(topic: str, header: bytes, body: bytes, key: ap.SigningKey) -> bytes:
    """A msgpack envelope of hand-made header/body bytes, validly signed."""
    return msgspec.msgpack.encode((header, body, key.sign(ap.signed_bytes(topic, header, body))))
