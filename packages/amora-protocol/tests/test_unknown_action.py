"""A command with an action this version does not know is UnsupportedAction, not plain garbage."""

from __future__ import annotations

import msgspec
import pytest

import amora_protocol as ap

NOW = 1_790_000_000_000
DEVICE = "player-1"
SESSION = "sess-1"


def _signed_command(body: dict[str, object], codec: ap.Codec, authz: ap.SigningKey) -> bytes:
    """A validly signed command envelope whose body is the given map (hand-made, as a newer app sends)."""
    app = ap.SigningKey.generate()
    grant = ap.issue_grant(
        ap.Grant(
            grant_id="g-1",
            subject="user-1",
            session_id=SESSION,
            signing_key=app.public_key.raw,
            devices=(DEVICE,),
            rights=(ap.Right.WATCH, ap.Right.CONTROL),
            issued_at_ms=NOW - 1000,
            expires_at_ms=NOW + 60_000,
        ),
        authz,
    )
    topic = ap.commands_topic(DEVICE)
    command = ap.Command(id="c-1", issued_at_ms=NOW - 10, expires_at_ms=NOW + 10_000, action=ap.Play())
    envelope = ap.encode_envelope(
        topic, command, signing_key=app, sender=SESSION, epoch=1, seq=1, now_ms=NOW - 10, grant=grant, codec=codec
    )
    header = ap.parse_envelope(envelope, content_type=codec.value).header_bytes
    encode = msgspec.msgpack.encode if codec is ap.Codec.MSGPACK else msgspec.json.encode
    raw = encode({**msgspec.to_builtins(command), **body})
    signature = app.sign(ap.signed_bytes(topic, header, raw))
    if codec is ap.Codec.MSGPACK:
        return msgspec.msgpack.encode((header, raw, signature))
    return msgspec.json.encode({"header": header, "body": raw, "sig": signature})


def _verify(payload: bytes, codec: ap.Codec, authz: ap.SigningKey) -> ap.VerifiedCommand:
    return ap.verify_command(
        payload,
        topic=ap.commands_topic(DEVICE),
        content_type=codec.value,
        trusted_keys={authz.public_key.kid: authz.public_key},
        now_ms=NOW,
    )


@pytest.mark.parametrize("codec", list(ap.Codec))
def test_an_unknown_action_is_unsupported(codec: ap.Codec):
    authz = ap.SigningKey.generate()
    payload = _signed_command({"action": {"type": "crossfade", "seconds": 3}}, codec, authz)
    with pytest.raises(ap.UnsupportedAction) as info:
        _verify(payload, codec, authz)
    assert info.value.action == "crossfade"
    assert isinstance(info.value, ap.SchemaError)  # older callers that catch SchemaError still do


@pytest.mark.parametrize(
    "body",
    [
        {"action": {"type": "set_volume", "volume": 500}},  # a known action, out of range
        {"action": "play"},  # not a map
        {"action": {"volume": 5}},  # no tag
    ],
)
def test_a_malformed_known_action_stays_a_plain_schema_error(body: dict[str, object]):
    authz = ap.SigningKey.generate()
    payload = _signed_command(body, ap.Codec.MSGPACK, authz)
    with pytest.raises(ap.SchemaError) as info:
        _verify(payload, ap.Codec.MSGPACK, authz)
    assert type(info.value) is ap.SchemaError
