import base64

import msgspec
import pytest

from amora_protocol import EncryptionKey, SigningKey
from amora_sync import Endpoint, SessionError
from amora_sync._session import decode_session, parse_endpoint, refresh_delay, select_endpoints


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("mqtts://127.0.0.1:8884", Endpoint(host="127.0.0.1", port=8884)),
        ("ssl://broker.example:9000", Endpoint(host="broker.example", port=9000)),
        ("localhost:1234", Endpoint(host="localhost", port=1234)),
        ("mqtts://broker.example", Endpoint(host="broker.example", port=8883)),
        ("wss://127.0.0.1:9001/mqtt", Endpoint(host="127.0.0.1", port=9001, transport="wss", path="/mqtt")),
        ("wss://mqtt.example", Endpoint(host="mqtt.example", port=443, transport="wss", path="/")),
        (
            "wss://mqtt.example/mqtt?tenant=a",
            Endpoint(host="mqtt.example", port=443, transport="wss", path="/mqtt?tenant=a"),
        ),
        ("ws://127.0.0.1:9001/mqtt", None),  # no TLS: not offered to the SDK
    ],
)
def test_parse_endpoint(raw, expected):
    assert parse_endpoint(raw) == expected


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _answer(**overrides: object) -> tuple[dict[str, object], SigningKey]:
    device_key = SigningKey.generate()
    enc = EncryptionKey.generate()
    body = {
        "session_id": "sess-1",
        "expires_at": 1_800_000_000_000,
        "broker": {
            "endpoints": ["mqtts://127.0.0.1:1", "wss://127.0.0.1:2", "127.0.0.1:3"],
            "username": "sess-1",
            "password": "pw",
            "client_id": "sess-1",
        },
        "grant": _b64(b"grant-token"),
        "devices": [
            {
                "device_id": "player-1",
                "signing_key": _b64(device_key.public_key.raw),
                "encryption_key": _b64(enc.public_key.raw),
            }
        ],
        "authz_keys": [{"kid": "k", "public_key": _b64(SigningKey.generate().public_key.raw)}],
    }
    body.update(overrides)
    return body, device_key


def testdecode_session_reads_the_contract():
    body, device_key = _answer()
    session = decode_session(msgspec.json.encode(body))
    assert session.session_id == "sess-1"
    assert session.broker.endpoints == (
        Endpoint(host="127.0.0.1", port=1),
        Endpoint(host="127.0.0.1", port=2, transport="wss", path="/"),
        Endpoint(host="127.0.0.1", port=3),
    )
    assert session.grant == b"grant-token"
    assert session.devices["player-1"].signing_key == device_key.public_key
    assert len(session.authz_keys) == 1


@pytest.mark.parametrize(
    "overrides",
    [
        {"broker": {"endpoints": ["ws://x:1"], "username": "u", "password": "p", "client_id": "c"}},
        {"devices": [{"device_id": "d", "signing_key": _b64(b"short"), "encryption_key": _b64(b"short")}]},
        {"grant": "%%%"},
        {"session_id": 5},
        {"expires_at": "2027-01-15T08:00:00+00:00"},  # the contract says ms since the epoch
        {"broker": None},  # every answer, refresh included, carries the whole session
    ],
)
def test_bad_session_answers_are_session_errors(overrides):
    body, _ = _answer(**overrides)
    with pytest.raises(SessionError):
        decode_session(msgspec.json.encode(body))


def test_refresh_happens_before_expiry():
    body, _ = _answer(expires_at=1_800_000_060_000)
    session = decode_session(msgspec.json.encode(body))
    delay = refresh_delay(session, now_ms=1_800_000_000_000, margin=0.2)
    assert 40 <= delay <= 50
    assert refresh_delay(session, now_ms=1_800_000_100_000, margin=0.2) == 0.5


@pytest.mark.parametrize(
    ("transport", "expected"),
    [
        ("auto", [1, 3]),  # mqtts when the session offers it
        ("mqtts", [1, 3]),
        ("wss", [2, 4]),
    ],
)
def test_select_endpoints_keeps_the_sessions_order(transport, expected):
    endpoints = tuple(parse_endpoint(raw) for raw in ("mqtts://p:1", "wss://p:2/mqtt", "mqtts://s:3", "wss://s:4/mqtt"))
    assert [e.port for e in select_endpoints(endpoints, transport)] == expected  # type: ignore[arg-type]


def test_auto_takes_wss_when_the_session_offers_nothing_else():
    endpoints = (Endpoint(host="p", port=443, transport="wss", path="/mqtt"),)
    assert select_endpoints(endpoints, "auto") == endpoints
    assert select_endpoints(endpoints, "mqtts") == ()
