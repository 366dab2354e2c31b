"""Token mode without a broker: token issuance (decoded by joserfc), the key and its CLI, the
configuration, the revocation store on both databases, the control messages, the desired state.

Against real mosquitto: ``test_token_mode_broker.py``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
from typing import TYPE_CHECKING

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from joserfc import jwt
from joserfc.errors import BadSignatureError
from joserfc.jwk import ECKey

from amora_authz import ConfigError, InvalidInputError, load_settings
from amora_authz._brokertoken import BrokerTokenKey, generate_private_pem, token_acl
from amora_authz._cli import main
from amora_authz._config import BrokerSettings, Settings
from amora_authz._desired import desired_state
from amora_authz._errors import BrokerError
from amora_authz._keyfiles import check_key_files, write_private
from amora_authz._revocations import (
    MAX_SESSIONS_PER_COMMAND,
    REVOCATION_MARGIN_S,
    missing_revocations,
    parse_revocations,
    revoke_commands,
)
from amora_authz._runtime import load_token_key
from amora_authz._sessionlists import PUBLISHER_ACCOUNT, PUBLISHER_ROLE
from amora_authz._store import Device, Link, Session

if TYPE_CHECKING:
    from pathlib import Path

    from amora_authz._store import Store


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _key_file(folder: Path) -> Path:
    path = folder / "broker-token-key.pem"
    write_private(path, generate_private_pem())
    return path


def _public(path: Path) -> ECKey:
    private = serialization.load_pem_private_key(path.read_bytes(), password=None)
    pem = private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return ECKey.import_key(pem)


def _expected_kid(path: Path) -> str:
    """The spec's key id, computed here without the service's code."""
    private = serialization.load_pem_private_key(path.read_bytes(), password=None)
    der = private.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()[:16]).rstrip(b"=").decode()


# -- the token ------------------------------------------------------------------------


def test_a_token_verifies_under_the_public_key_and_carries_the_session_and_its_acl(tmp_path: Path) -> None:
    path = _key_file(tmp_path)
    key = BrokerTokenKey.load(path, issuer="amora-authz", audience="amora-broker")
    token = key.issue(
        subject="alice",
        username="sess.0123",
        client_id="sess.0123",
        devices=["player-2", "player-1"],
        issued_at_s=1_764_470_000,
        expires_at_s=1_764_473_600,
    )
    decoded = jwt.decode(token, _public(path), algorithms=["ES256"])
    assert decoded.header == {"alg": "ES256", "typ": "JWT", "kid": _expected_kid(path)}
    assert key.kid == _expected_kid(path)
    assert len(base64.urlsafe_b64decode(token.rsplit(".", 1)[1] + "==")) == 64  # raw r||s
    claims = decoded.claims
    assert {k: claims[k] for k in ("iss", "aud", "sub", "username", "clientid", "iat", "exp")} == {
        "iss": "amora-authz",
        "aud": "amora-broker",
        "sub": "alice",
        "username": "sess.0123",
        "clientid": "sess.0123",
        "iat": 1_764_470_000,
        "exp": 1_764_473_600,
    }
    # Exactly what the dynsec role user-device:{id} grants, per device in id order.
    assert claims["acl"] == [
        rule
        for device in ("player-1", "player-2")
        for rule in (
            {"permission": "allow", "action": "subscribe", "topic": f"amora/devices/{device}/state"},
            {"permission": "allow", "action": "subscribe", "topic": f"amora/devices/{device}/connection"},
            {"permission": "allow", "action": "subscribe", "topic": f"amora/devices/{device}/responses"},
            {"permission": "allow", "action": "publish", "topic": f"amora/devices/{device}/commands"},
        )
    ]
    # Another key does not verify it.
    with pytest.raises(BadSignatureError):
        jwt.decode(token, _public(_key_file(tmp_path / "other")), algorithms=["ES256"])


def test_a_user_without_devices_gets_a_token_that_reaches_nothing(tmp_path: Path) -> None:
    key = BrokerTokenKey.load(_key_file(tmp_path), issuer="i", audience="a")
    token = key.issue(subject="bob", username="sess.1", client_id="sess.1", devices=[], issued_at_s=1, expires_at_s=2)
    assert json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))["acl"] == []


def test_more_devices_than_one_token_carries_are_refused() -> None:
    assert len(token_acl(f"player-{n}" for n in range(64))) == 256
    with pytest.raises(InvalidInputError) as refused:
        token_acl(f"player-{n}" for n in range(65))
    assert refused.value.code == "too_many_devices"
    assert 'credentials = "dynsec"' in refused.value.message


# -- the key file and its CLI -----------------------------------------------------------


def test_generate_writes_a_private_key_0600_from_the_first_byte_and_never_overwrites(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[int] = []
    real_open = os.open

    def spy(path: object, flags: int, mode: int = 0o777, *args: object, **kwargs: object) -> int:
        if flags & os.O_CREAT:
            opened.append(mode)
        return real_open(path, flags, mode, *args, **kwargs)  # type: ignore[arg-type]

    out = tmp_path / "keys" / "broker-token.pem"
    monkeypatch.setattr(os, "open", spy)
    assert main(["broker-token-key", "generate", "--out", str(out)]) == 0
    monkeypatch.undo()
    assert opened == [0o600]
    assert _mode(out) == 0o600
    kid = capsys.readouterr().out.strip()
    assert kid == _expected_kid(out)

    before = out.read_bytes()
    assert main(["broker-token-key", "generate", "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert f"{out} exists" in error
    assert "delete the file first" in error
    assert out.read_bytes() == before


def test_public_writes_the_pem_the_plugin_loads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = _key_file(tmp_path)
    out = tmp_path / "broker-token-keys.pem"
    assert main(["broker-token-key", "public", "--key", str(key), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == _expected_kid(key)
    public = serialization.load_pem_public_key(out.read_bytes())
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert isinstance(public.curve, ec.SECP256R1)
    assert b"PRIVATE" not in out.read_bytes()
    # Without --out: the PEM on standard output.
    assert main(["broker-token-key", "public", "--key", str(key)]) == 0
    assert capsys.readouterr().out.encode() == out.read_bytes()


def test_the_key_commands_have_help(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["broker-token-key", "--help"], ["broker-token-key", "generate", "--help"]):
        with pytest.raises(SystemExit) as done:
            main(argv)
        assert done.value.code == 0
    assert "--out" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"not a key", "is not an unencrypted PEM private key"),
        (
            ec.generate_private_key(ec.SECP384R1()).private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
            "is not an EC P-256 key",
        ),
        (
            rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
            "is not an EC P-256 key",
        ),
    ],
)
def test_a_key_that_is_not_p256_is_refused_naming_the_file_and_the_fix(
    tmp_path: Path, content: bytes, expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "key.pem"
    write_private(path, content)
    settings = Settings(broker=BrokerSettings(credentials="token", token_key_file=str(path)))
    with pytest.raises(ConfigError) as refused:
        load_token_key(settings)
    assert f"the broker token key {path} {expected}" in refused.value.message
    assert "amora-authz broker-token-key generate" in refused.value.message
    assert main(["broker-token-key", "public", "--key", str(path)]) == 2
    assert expected in capsys.readouterr().err


def test_a_key_others_may_read_is_refused_before_serving(tmp_path: Path) -> None:
    path = _key_file(tmp_path)
    path.chmod(0o644)
    settings = Settings(
        state_dir=str(tmp_path / "state"), broker=BrokerSettings(credentials="token", token_key_file=str(path))
    )
    for check in (check_key_files, load_token_key):
        with pytest.raises(ConfigError, match=rf"broker token key {path} is accessible by group or others"):
            check(settings)
    # In dynsec mode the file is not the service's concern.
    check_key_files(Settings(state_dir=str(tmp_path / "state"), broker=BrokerSettings(token_key_file=str(path))))


# -- configuration ----------------------------------------------------------------------


def test_broker_settings_from_the_file_and_the_environment(tmp_path: Path) -> None:
    config = tmp_path / "authz.toml"
    config.write_text(
        f'[broker]\ncredentials = "token"\ntoken_key_file = "{tmp_path / "k.pem"}"\ntoken_audience = "mqtt"\n'
    )
    settings = load_settings(config, environ={"AMORA_AUTHZ_BROKER__TOKEN_ISSUER": "authz-eu"})
    assert settings.broker == BrokerSettings(
        credentials="token", token_key_file=str(tmp_path / "k.pem"), token_issuer="authz-eu", token_audience="mqtt"
    )
    assert settings.broker.tokens
    assert load_settings(environ={}).broker == BrokerSettings(credentials="dynsec")


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ('[broker]\ncredentials = "token"\n', "needs token_key_file"),
        ('[broker]\ncredentials = "jwt"\n', 'must be "dynsec" or "token", not \'jwt\''),
        ('[broker]\ncredential = "token"\n', "unknown field `credential`"),
        ('[broker]\ncredentials = "token"\ntoken_key_file = "k"\ntoken_issuer = ""\n', "must not be empty"),
    ],
)
def test_bad_broker_settings_name_the_cause(tmp_path: Path, toml: str, expected: str) -> None:
    config = tmp_path / "authz.toml"
    config.write_text(toml)
    with pytest.raises(ConfigError, match=expected) as refused:
        load_settings(config, environ={})
    if "token_key_file" in expected:
        assert "amora-authz broker-token-key generate --out FILE" in refused.value.message


# -- revocations in the database (SQLite and PostgreSQL) -------------------------------------


def _session(session_id: str, user: str, *, expires: int) -> Session:
    return Session(
        session_id=session_id,
        user_sub=user,
        client_name=None,
        signing_key=bytes(range(32)),
        encryption_key=bytes(range(32, 64)),
        created_at_ms=1_000,
        expires_at_ms=expires,
    )


async def test_ending_sessions_records_their_revocations(store: Store) -> None:
    for session_id, user, expires in (
        ("sess.a1", "alice", 10_000_500),
        ("sess.a2", "alice", 20_000_000),
        ("sess.b1", "bob", 30_000_000),
        ("sess.c1", "carol", 5_000),
    ):
        await store.add_session(_session(session_id, user, expires=expires))
    ended = await store.end_sessions(session_ids=["sess.a1"], margin_s=60, at_ms=9_000)
    assert ended == {"sess.a1": "alice"}
    # until = the expiry rounded up to a second, plus the margin.
    assert await store.live_revocations(now_s=0) == {"sess.a1": 10_001 + 60}
    assert await store.get_session("sess.a1") is None

    assert await store.end_sessions(users=["alice", "bob"], margin_s=60, at_ms=9_000) == {
        "sess.a2": "alice",
        "sess.b1": "bob",
    }
    assert await store.end_sessions(expired_at_ms=6_000, margin_s=60, at_ms=9_000) == {"sess.c1": "carol"}
    assert await store.end_sessions(margin_s=60, at_ms=9_000) == {}  # no condition: nothing
    assert await store.live_revocations(now_s=0) == {
        "sess.a1": 10_061,
        "sess.a2": 20_060,
        "sess.b1": 30_060,
        "sess.c1": 65,
    }
    assert await store.live_revocations(["sess.a2", "sess.zz"], now_s=0) == {"sess.a2": 20_060}
    assert await store.live_revocations([], now_s=0) == {}
    # A revocation recorded again keeps the later until.
    await store.record_revocations({"sess.a2": ("alice", 100), "sess.b1": ("bob", 40_000)}, at_ms=9_500)
    live = await store.live_revocations(now_s=100)
    assert (live["sess.a2"], live["sess.b1"]) == (20_060, 40_000)
    # Past their until they are no longer in force, and the sweep drops them.
    assert set(await store.live_revocations(now_s=20_060)) == {"sess.b1"}
    assert await store.purge_revocations(now_s=20_060) == 3
    assert await store.live_revocations(now_s=0) == {"sess.b1": 40_000}


async def test_token_mode_counts_no_session_objects(store: Store) -> None:
    await store.add_device(
        Device(device_id="player-1", signing_key=b"s" * 32, encryption_key=b"e" * 32, created_at_ms=1)
    )
    await store.link("alice", "player-1", at_ms=1)
    await store.add_session(_session("sess.a1", "alice", expires=10**13))
    assert await store.managed_counts() == (3, 1, 3)
    # Token mode: the device and the publisher; no groups; device role and publisher role.
    assert await store.managed_counts(session_clients=False) == (2, 0, 2)


# -- control messages ------------------------------------------------------------------


def test_revocations_go_in_commands_of_at_most_1000_sessions() -> None:
    revoked = {f"sess.{n:05d}": 1_764_470_000 + n for n in range(2_500)}
    commands = revoke_commands(revoked)
    assert [len(c["sessions"]) for c in commands] == [MAX_SESSIONS_PER_COMMAND, MAX_SESSIONS_PER_COMMAND, 500]
    assert {c["command"] for c in commands} == {"revokeSessions"}
    sent = {e["username"]: e["until"] for c in commands for e in c["sessions"]}
    assert sent == revoked
    assert commands[0]["sessions"][0] == {"username": "sess.00000", "until": 1_764_470_000}
    assert revoke_commands({}) == []


def test_list_revocations_answers_are_parsed_and_checked() -> None:
    listed = {"sessions": [{"username": "sess.a", "until": 10}, {"username": "sess.b", "until": 20}], "count": 2}
    assert parse_revocations({"command": "listRevocations", **listed}, broker="p") == {"sess.a": 10, "sess.b": 20}
    assert parse_revocations({"command": "listRevocations", "data": listed}, broker="p") == {
        "sess.a": 10,
        "sess.b": 20,
    }
    for bad in ({"command": "listRevocations"}, {"sessions": [{"username": "sess.a", "until": "10"}]}):
        with pytest.raises(BrokerError) as refused:
            parse_revocations(bad, broker="primary")
        assert refused.value.code == "bad_control_response"
        assert "broker primary" in refused.value.message


def test_a_broker_is_sent_what_it_lacks_or_holds_too_short() -> None:
    wanted = {"sess.a": 100, "sess.b": 200, "sess.c": 300}
    held = {"sess.a": 100, "sess.b": 150, "sess.old": 50}
    assert missing_revocations(wanted, held) == {"sess.b": 200, "sess.c": 300}
    assert missing_revocations(wanted, {**wanted, "sess.d": 1}) == {}


def test_the_margin_covers_the_plugin_s_clock_tolerance() -> None:
    assert REVOCATION_MARGIN_S >= 60


# -- the desired dynsec state ---------------------------------------------------------------


def test_token_mode_wants_no_session_clients_user_groups_or_user_device_roles() -> None:
    devices = [Device(device_id="player-1", signing_key=b"s" * 32, encryption_key=b"e" * 32, created_at_ms=1)]
    links = [Link(user_sub="alice", device_id="player-1", created_at_ms=1)]
    sessions = [_session("sess.a1", "alice", expires=10**13)]
    dynsec = desired_state(devices, links, sessions, password_for=lambda name: f"pw-{name}")
    tokens = desired_state(devices, links, sessions, password_for=lambda name: f"pw-{name}", session_clients=False)
    assert set(dynsec.clients) == {"player-1", "sess.a1", PUBLISHER_ACCOUNT}
    assert set(dynsec.groups) == {"user:alice"}
    assert set(dynsec.roles) == {"device:player-1", "user-device:player-1", PUBLISHER_ROLE}
    assert set(tokens.clients) == {"player-1", PUBLISHER_ACCOUNT}
    assert tokens.groups == {}
    assert set(tokens.roles) == {"device:player-1", PUBLISHER_ROLE}
    # What stays is the same object in both modes.
    assert tokens.clients["player-1"] == dynsec.clients["player-1"]
    assert tokens.clients[PUBLISHER_ACCOUNT] == dynsec.clients[PUBLISHER_ACCOUNT]
    assert tokens.roles["device:player-1"] == dynsec.roles["device:player-1"]
    assert tokens.default_acl == dynsec.default_acl
