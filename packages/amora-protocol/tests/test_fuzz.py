"""Random and mutated bytes: decoding raises only ProtocolError subclasses, nothing else."""

from __future__ import annotations

import contextlib

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

import amora_protocol as ap

NOW = 1_800_000_000_000
DEV = "p1"
DEVICE_KEY = ap.SigningKey.from_raw(bytes([1]) * 32)
AUTHZ_KEY = ap.SigningKey.from_raw(bytes([2]) * 32)
SESSION_KEY = ap.SigningKey.from_raw(bytes([3]) * 32)
ENC = ap.EncryptionKey.from_raw(bytes([4]) * 32)
GRANT = ap.issue_grant(
    ap.Grant(
        grant_id="g",
        subject="u",
        session_id="s",
        signing_key=SESSION_KEY.public_key.raw,
        devices=(DEV,),
        rights=(ap.Right.CONTROL,),
        issued_at_ms=NOW,
        expires_at_ms=NOW + 60_000,
    ),
    AUTHZ_KEY,
)
STATE = ap.Sender(DEV, DEVICE_KEY, epoch=1).encode(
    ap.state_topic(DEV),
    ap.DeviceState(device_id=DEV, version=1, status=ap.PlaybackStatus.STOP, sampled_at_ms=NOW),
    now_ms=NOW,
)
CMD = ap.Sender("s", SESSION_KEY, epoch=1).encode(
    ap.commands_topic(DEV),
    ap.Command(id="c", issued_at_ms=NOW, expires_at_ms=NOW + 1_000, action=ap.Seek(position_ms=5)),
    now_ms=NOW,
    grant=GRANT,
    seal_to=ENC.public_key,
)


def _decode_all(payload: bytes, content_type: str | None) -> None:
    with contextlib.suppress(ap.ProtocolError):
        ap.verify_envelope(
            payload,
            topic=ap.state_topic(DEV),
            content_type=content_type,
            key=DEVICE_KEY.public_key,
            now_ms=NOW,
        )
    with contextlib.suppress(ap.ProtocolError):
        ap.verify_command(
            payload,
            topic=ap.commands_topic(DEV),
            content_type=content_type,
            trusted_keys=ap.keyring([AUTHZ_KEY.public_key]),
            now_ms=NOW,
            decrypt_key=ENC,
        )
    with contextlib.suppress(ap.ProtocolError):
        ap.verify_grant(payload, ap.keyring([AUTHZ_KEY.public_key]), now_ms=NOW)


CONTENT_TYPES = st.sampled_from([None, ap.Codec.MSGPACK.value, ap.Codec.JSON.value])


@settings(max_examples=400)
@given(st.binary(max_size=512), CONTENT_TYPES)
def test_random_bytes(payload: bytes, content_type: str | None):
    _decode_all(payload, content_type)


@settings(max_examples=400)
@given(st.sampled_from([STATE, CMD]), st.data())
def test_mutated_envelopes(base: bytes, data: st.DataObject):
    payload = bytearray(base)
    for _ in range(data.draw(st.integers(1, 8))):
        i = data.draw(st.integers(0, len(payload) - 1))
        payload[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(payload)))
    _decode_all(bytes(payload[:cut]), None)


@settings(max_examples=200)
@given(
    st.dictionaries(
        st.sampled_from(["header", "body", "sig", "x"]),
        st.one_of(st.text(), st.binary(), st.integers(-(2**63), 2**63 - 1), st.none()),
    )
)
def test_structured_junk_in_both_codecs(outer: dict[str, object]):
    _decode_all(msgspec.json.encode(outer), ap.Codec.JSON.value)
    _decode_all(msgspec.msgpack.encode(list(outer.values())), None)


@settings(max_examples=200)
@given(st.lists(st.binary(max_size=300), min_size=3, max_size=3))
def test_well_framed_junk_reaches_the_header_decoder(parts: list[bytes]):
    header = ap.parse_envelope(STATE).header_bytes
    _decode_all(msgspec.msgpack.encode((header, parts[1], parts[2])), None)
    _decode_all(msgspec.msgpack.encode(tuple(parts)), None)
