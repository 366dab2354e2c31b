from __future__ import annotations

import msgspec
import pytest

import amora_protocol as ap

ANSWER = {
    "session_id": "sess.00112233445566778899aabbccddeeff",
    "expires_at": 1_790_000_000_000,
    "broker": {
        "endpoints": ["mqtts://127.0.0.1:8883"],
        "username": "sess.00112233445566778899aabbccddeeff",
        "password": "secret",
        "client_id": "sess.00112233445566778899aabbccddeeff",
    },
    "grant": "Z3JhbnQ=",
    "devices": [{"device_id": "player-1", "signing_key": "c2ln", "encryption_key": "ZW5j"}],
    "authz_keys": [{"kid": "k1", "public_key": "cHVi"}],
    "added_later": {"ignored": True},
}


def test_an_answer_decodes_and_reencodes_without_the_unknown_field():
    session = ap.decode_session_response(msgspec.json.encode(ANSWER))
    assert session.expires_at == ANSWER["expires_at"]
    assert session.broker.endpoints == ("mqtts://127.0.0.1:8883",)
    assert session.devices == (ap.DevicePublicKeys(device_id="player-1", signing_key="c2ln", encryption_key="ZW5j"),)
    assert session.authz_keys == (ap.AuthzPublicKey(kid="k1", public_key="cHVi"),)
    again = msgspec.json.decode(msgspec.json.encode(session))
    assert again == {k: v for k, v in ANSWER.items() if k != "added_later"}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"expires_at": "2026-11-29T00:00:00Z"}, "expires_at"),
        ({"expires_at": 1.5}, "expires_at"),
        ({"grant": None}, "grant"),
        ({"broker": {"endpoints": []}}, "username"),
    ],
)
def test_a_wrong_answer_is_a_schema_error_naming_the_field(change: dict[str, object], field: str):
    with pytest.raises(ap.SchemaError, match=field):
        ap.decode_session_response(msgspec.json.encode({**ANSWER, **change}))


def test_a_missing_field_is_named():
    body = {k: v for k, v in ANSWER.items() if k != "session_id"}
    with pytest.raises(ap.SchemaError, match="session_id"):
        ap.decode_session_response(msgspec.json.encode(body))


def test_not_json_is_a_schema_error():
    with pytest.raises(ap.SchemaError, match="malformed"):
        ap.decode_session_response(b"<html>gateway timeout</html>")


def test_the_request_limits_key_sizes():
    with pytest.raises(msgspec.ValidationError, match="signing_key"):
        msgspec.json.decode(b'{"signing_key": "' + b"A" * 65 + b'", "encryption_key": "x"}', type=ap.SessionRequest)


def test_now_ms_is_wall_clock_milliseconds():
    import time  # noqa: PLC0415 - only this test reads the clock

    before = time.time_ns() // 1_000_000
    now = ap.now_ms()
    after = time.time_ns() // 1_000_000
    assert before <= now <= after
