"""The broker-token plugin (infra/broker-plugin, amora_auth.so) in a real mosquitto.

Each test runs the harness broker with the plugin loaded before dynamic security, signs
tokens here with `cryptography` (ES256, the contract in infra/broker-plugin/README.md),
and checks what a real MQTT 5 client gets: CONNACK, SUBACK and DISCONNECT reason codes,
and which messages arrive. Refusals are also checked in the broker's log, so each case
proves the check it is named after fired (and that the token never reaches the log).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import socket
import stat
import subprocess
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from amora_devtools import MqttClient, MqttRefused, ServiceStartError, create_session_client, start_broker
from amora_devtools._broker_config import plugin_source_dir
from amora_devtools._proc import wait_until
from amora_devtools.broker import AMORA_AUTH_TOPIC, BrokerProcess, TokenPlugin, amora_auth

if TYPE_CHECKING:
    from collections.abc import Iterator

    from amora_devtools import DevPKI

pytestmark = pytest.mark.services

# mosquitto 2.0.11 answers every refused CONNECT credential with 0x87 (Not authorized), for
# dynsec's passwords and this plugin's tokens alike (handle_connect.c): so does the SDK expect.
NOT_AUTHORIZED = 0x87
ADMINISTRATIVE_ACTION = 0x98
PREFIX = "amora/harness/t"  # the admin may publish under amora/harness/#


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Signer:
    """An authz-like issuer: an EC P-256 key and the token format of the contract."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        spki = self.key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.kid = b64(hashlib.sha256(spki).digest()[:16])

    def public_pem(self) -> bytes:
        return self.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def sign(self, header: dict[str, Any], claims: dict[str, Any]) -> str:
        return self.sign_payload(header, json.dumps(claims).encode())

    def sign_payload(self, header: dict[str, Any], payload: bytes) -> str:
        signing_input = f"{b64(json.dumps(header).encode())}.{b64(payload)}"
        r, s = decode_dss_signature(self.key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
        return f"{signing_input}.{b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def acl_rules() -> list[dict[str, str]]:
    """Device d1 granted, d2 refused (first match decides), as authz grants a device."""
    return [
        {"permission": "deny", "action": "all", "topic": f"{PREFIX}/d2/#"},
        {"permission": "allow", "action": "subscribe", "topic": f"{PREFIX}/d1/state"},
        {"permission": "allow", "action": "subscribe", "topic": f"{PREFIX}/+/connection"},
        {"permission": "allow", "action": "publish", "topic": f"{PREFIX}/d1/commands"},
    ]


def claims_for(username: str, clientid: str, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": "amora-authz",
        "aud": "amora-broker",
        "sub": "user-1",
        "username": username,
        "clientid": clientid,
        "iat": now,
        "exp": now + 3600,
        "acl": acl_rules(),
    }
    claims.update(overrides)
    return claims


def new_session() -> tuple[str, str]:
    session = uuid.uuid4().hex[:12]
    return f"sess.{session}", f"c-{session}"


@pytest.fixture(scope="module")
def signer() -> Signer:
    return Signer()


@pytest.fixture(scope="module")
def keys_file(signer: Signer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("token-keys") / "broker-token-keys.pem"
    # Rotation: the file may hold several keys; the signer's is the second.
    path.write_bytes(Signer().public_pem() + signer.public_pem())
    return path


@pytest.fixture(scope="module")
def token_broker(dev_pki: DevPKI, keys_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    with start_broker(tmp_path_factory.mktemp("token-broker"), dev_pki, token_plugin=TokenPlugin(keys_file)) as broker:
        yield broker


@pytest.fixture
def fresh_broker(dev_pki: DevPKI, keys_file: Path, tmp_path: Path) -> Iterator[BrokerProcess]:
    """A broker of its own, for tests that restart it or change its files."""
    with start_broker(tmp_path, dev_pki, token_plugin=TokenPlugin(keys_file)) as broker:
        yield broker


def connect(
    broker: BrokerProcess, username: str, clientid: str, password: str, *, websocket: bool = False, **kwargs: Any
) -> MqttClient:
    return MqttClient.connect(
        broker.host,
        broker.ws_port if websocket else broker.app_port,
        websocket=websocket,
        ssl_context=broker.client_context(),
        client_id=clientid,
        username=username,
        password=password,
        **kwargs,
    )


def refused(broker: BrokerProcess, username: str, clientid: str, password: str) -> int:
    with pytest.raises(MqttRefused) as excinfo:
        connect(broker, username, clientid, password).disconnect()
    return excinfo.value.reason_code


class RawSession:
    """A bare MQTT 5 CONNECT over TLS, to read the DISCONNECT reason code (paho 1.6 drops it)."""

    def __init__(self, broker: BrokerProcess, username: str, clientid: str, password: str) -> None:
        raw = socket.create_connection((broker.host, broker.app_port), timeout=5.0)
        self.sock = broker.client_context().wrap_socket(raw, server_hostname="localhost")
        body = b"\x00\x04MQTT\x05\xc2\x00\x3c\x00" + _utf8(clientid) + _utf8(username) + _utf8(password)
        self.sock.sendall(b"\x10" + _varint(len(body)) + body)
        kind, packet = self._read_packet()
        assert kind == 0x20, f"expected CONNACK, got {kind:#x}"
        self.connack = packet[1]

    def _read_packet(self) -> tuple[int, bytes]:
        head = self._read(1)[0]
        length, shift = 0, 0
        while True:
            byte = self._read(1)[0]
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        return head & 0xF0, self._read(length)

    def _read(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("closed by the broker")
            data += chunk
        return data

    def disconnect_reason(self) -> int:
        kind, packet = self._read_packet()
        assert kind == 0xE0, f"expected DISCONNECT, got {kind:#x}"
        return packet[0] if packet else 0

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


def _utf8(text: str) -> bytes:
    data = text.encode()
    return len(data).to_bytes(2, "big") + data


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = n >> 7, n & 0x7F
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def wait_log(broker: BrokerProcess, text: str) -> bool:
    return wait_until(lambda: True if text in broker.log_text() else None, timeout=5.0) is not None


def delivered(broker: BrokerProcess, client: MqttClient, topic: str) -> bool:
    """Publish on `topic` as the admin, then a marker on d1/state: was `topic` delivered?

    The marker is allowed and published after, on the same connection, so once it has
    arrived anything published before it on `topic` would have arrived too.
    """
    marker = f"{PREFIX}/d1/state"
    token = uuid.uuid4().hex.encode()
    with broker.admin_client() as admin:
        admin.publish(topic, b"probe", qos=1)
        admin.publish(marker, token, qos=1)
    seen = []
    while (message := client.receive(timeout=5.0)) is not None:
        seen.append(message.topic)
        if message.topic == marker and message.payload == token:
            return topic in seen[:-1] or (topic == marker and len(seen) >= 1)
    pytest.fail(f"the marker never arrived (saw {seen})")


# ---- accepted, and the ACL enforced ----------------------------------------------------


def test_valid_token_connects_and_its_acl_is_enforced(token_broker, signer):
    username, clientid = new_session()
    password = signer.sign({"alg": "ES256", "typ": "JWT", "kid": signer.kid}, claims_for(username, clientid))
    with connect(token_broker, username, clientid, password) as client:
        # subscribe: literal grant, exactly a wildcard grant; refused: another device, a wider
        # wildcard, $ topics (never matched, even by a "#" rule)
        assert client.subscribe(f"{PREFIX}/d1/state") == 1
        assert client.subscribe(f"{PREFIX}/+/connection") == 1
        assert client.subscribe(f"{PREFIX}/d2/state") == NOT_AUTHORIZED
        assert client.subscribe(f"{PREFIX}/#") == NOT_AUTHORIZED
        assert client.subscribe(f"{PREFIX}/d1/+") == NOT_AUTHORIZED
        assert client.subscribe("$SYS/#") == NOT_AUTHORIZED
        assert client.subscribe(f"$share/g/{PREFIX}/d1/state") == NOT_AUTHORIZED  # shared: a $ topic too
        assert client.subscribe(AMORA_AUTH_TOPIC + "/response") == NOT_AUTHORIZED
        assert client.subscribe(f"{PREFIX}/d1/commands") == NOT_AUTHORIZED  # publish-only grant
        # receive: through the wildcard subscription, d1 arrives, d2 (denied first) does not
        assert delivered(token_broker, client, f"{PREFIX}/d1/connection")
        assert not delivered(token_broker, client, f"{PREFIX}/d2/connection")
        # unsubscribe is always allowed
        assert client.unsubscribe(f"{PREFIX}/+/connection") == 0
        assert not delivered(token_broker, client, f"{PREFIX}/d1/connection")


def test_clock_skew_up_to_a_minute_is_tolerated_and_wss_works_too(token_broker, signer):
    username, clientid = new_session()
    now = int(time.time())
    # issued 30 s "in the future" by a clock ahead of the broker's, valid a few seconds more
    token = signer.sign(_header(signer), claims_for(username, clientid, iat=now + 30, exp=now + 30))
    with connect(token_broker, username, clientid, token, websocket=True) as client:
        assert client.subscribe(f"{PREFIX}/d1/state") == 1
        assert client.subscribe(f"{PREFIX}/d2/state") == NOT_AUTHORIZED


def test_publish_is_limited_to_the_tokens_topics(token_broker, signer):
    username, clientid = new_session()
    password = signer.sign({"alg": "ES256", "typ": "JWT", "kid": signer.kid}, claims_for(username, clientid))
    with token_broker.admin_client() as admin, connect(token_broker, username, clientid, password) as client:
        assert admin.subscribe(f"{PREFIX}/#") == 1
        for topic in (f"{PREFIX}/d2/commands", f"{PREFIX}/d1/state", AMORA_AUTH_TOPIC):
            client.publish(topic, b"refused", qos=1)
        client.publish(f"{PREFIX}/d1/commands", b"allowed", qos=1)
        message = admin.receive(timeout=5.0)
        # Published last, arrives first and alone: the three before it were dropped.
        assert message is not None
        assert (message.topic, message.payload) == (f"{PREFIX}/d1/commands", b"allowed")
        assert admin.receive(timeout=0.5) is None
        assert "revokeSessions" not in token_broker.log_text()


# ---- refused -----------------------------------------------------------------------------


def _header(signer: Signer, **extra: Any) -> dict[str, Any]:
    return {"alg": "ES256", "typ": "JWT", "kid": signer.kid, **extra}


def _tamper_signature(token: str) -> str:
    head, _, sig = token.rpartition(".")
    raw = bytearray(base64.urlsafe_b64decode(sig + "=="))
    raw[10] ^= 1
    return f"{head}.{b64(bytes(raw))}"


def _unsigned(header: dict[str, Any], claims: dict[str, Any], sig: bytes = b"") -> str:
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}.{b64(sig)}"


REFUSALS: dict[str, tuple[Any, str]] = {
    # name: (build(signer, username, clientid) -> password, reason in the log)
    "bad_signature": (
        lambda s, u, c: _tamper_signature(s.sign(_header(s), claims_for(u, c))),
        "bad signature",
    ),
    "other_key": (lambda s, u, c: Signer().sign(_header(s), claims_for(u, c)), "bad signature"),
    "alg_none": (
        lambda s, u, c: _unsigned({"alg": "none", "kid": s.kid}, claims_for(u, c), bytes(64)),
        "alg is not ES256",
    ),
    "alg_none_unsigned": (lambda _s, u, c: _unsigned({"alg": "none"}, claims_for(u, c)), "not a compact JWS"),
    "alg_hs256": (
        lambda s, u, c: _unsigned({"alg": "HS256", "kid": s.kid}, claims_for(u, c), b"x" * 32),
        "alg is not ES256",
    ),
    "unknown_kid": (lambda s, u, c: s.sign(_header(s, kid=b64(b"\x00" * 16)), claims_for(u, c)), "unknown kid"),
    "crit": (lambda s, u, c: s.sign(_header(s, crit=["exp"]), claims_for(u, c)), "crit header present"),
    "expired": (lambda s, u, c: s.sign(_header(s), claims_for(u, c, exp=int(time.time()) - 1)), "expired"),
    "iat_in_future": (
        lambda s, u, c: s.sign(_header(s), claims_for(u, c, iat=int(time.time()) + 300)),
        "issued in the future",
    ),
    "wrong_iss": (lambda s, u, c: s.sign(_header(s), claims_for(u, c, iss="someone")), "wrong iss"),
    "wrong_aud": (lambda s, u, c: s.sign(_header(s), claims_for(u, c, aud="other-broker")), "wrong aud"),
    "aud_array": (lambda s, u, c: s.sign(_header(s), claims_for(u, c, aud=["amora-broker"])), "wrong aud"),
    "username_mismatch": (
        lambda s, _u, c: s.sign(_header(s), claims_for("sess.someone-else", c)),
        "username does not match the token",
    ),
    "clientid_mismatch": (
        lambda s, u, _c: s.sign(_header(s), claims_for(u, "another-client")),
        "client id does not match the token",
    ),
    "oversized": (
        lambda s, u, c: s.sign(_header(s), claims_for(u, c, pad="x" * 16384)),
        "token too large",
    ),
    "malformed_base64": (lambda _s, _u, _c: "e30=.e30=.AAAA", "header is not base64url JSON"),
    "malformed_json": (
        lambda _s, _u, _c: f"{b64(b'{alg')}.{b64(b'{}')}.{b64(bytes(64))}",
        "header is not base64url JSON",
    ),
    "not_a_jws": (lambda _s, _u, _c: "a-plain-password", "not a compact JWS"),
    "claims_not_json": (
        lambda s, _u, _c: s.sign_payload(_header(s), b"not json"),
        "claims are not base64url JSON",
    ),
    "escaped_nul": (
        lambda s, u, c: s.sign(
            _header(s), claims_for(u, c, acl=[{"permission": "allow", "action": "all", "topic": "a\x00/#"}])
        ),
        "claims are not base64url JSON",
    ),
    "trailing_bytes": (
        lambda s, u, c: s.sign_payload(_header(s), json.dumps(claims_for(u, c)).encode() + b" {}"),
        "claims are not base64url JSON",
    ),
    "acl_missing": (
        lambda s, u, c: s.sign(_header(s), {k: v for k, v in claims_for(u, c).items() if k != "acl"}),
        "acl claim missing or not an array",
    ),
    "acl_rule_with_qos": (
        lambda s, u, c: s.sign(
            _header(s), claims_for(u, c, acl=[{"permission": "allow", "action": "all", "topic": "a", "qos": [0]}])
        ),
        "acl rule has an unsupported member",
    ),
    "acl_bad_filter": (
        lambda s, u, c: s.sign(
            _header(s), claims_for(u, c, acl=[{"permission": "allow", "action": "all", "topic": "a/#/b"}])
        ),
        "acl rule topic is empty, too long or not a valid filter",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_bad_tokens_are_refused(token_broker, signer, case):
    build, reason = REFUSALS[case]
    username, clientid = new_session()
    password = build(signer, username, clientid)
    assert refused(token_broker, username, clientid, password) == NOT_AUTHORIZED
    assert wait_log(token_broker, f"amora_auth: refused {username}: {reason}")
    assert password not in token_broker.log_text()


def test_sess_names_never_fall_through_to_dynsec(token_broker):
    # A dynsec client with a sess. name and a plain password: dynsec would accept it.
    username = f"sess.dynsec-{uuid.uuid4().hex[:8]}"
    create_session_client(token_broker, username, "plain-password", user="u-fallthrough", device_ids=["d1"])
    assert refused(token_broker, username, username, "plain-password") == NOT_AUTHORIZED
    assert wait_log(token_broker, f"amora_auth: refused {username}: not a compact JWS")


def test_other_usernames_still_authenticate_through_dynsec(token_broker, signer):
    username = f"app-{uuid.uuid4().hex[:8]}"
    create_session_client(token_broker, username, "dynsec-password", user="u-dynsec", device_ids=["d1"])
    with connect(token_broker, username, username, "dynsec-password") as client:
        assert client.subscribe("amora/devices/d1/state") < 0x80  # its dynsec role's topic
        assert client.subscribe("amora/devices/d2/state") == NOT_AUTHORIZED
    assert refused(token_broker, username, username, "wrong") == NOT_AUTHORIZED
    # A token is no password for a dynsec account.
    token = signer.sign(_header(signer), claims_for(username, username))
    assert refused(token_broker, username, username, token) == NOT_AUTHORIZED
    with token_broker.admin_client() as admin:  # the admin account is dynsec's too
        assert admin.subscribe("$SYS/broker/uptime") < 0x80


def test_a_reconnect_with_the_same_client_id_replaces_the_acl(token_broker, signer):
    username, clientid = new_session()
    first = signer.sign(_header(signer), claims_for(username, clientid))
    narrower = claims_for(username, clientid, acl=[{"permission": "allow", "action": "subscribe", "topic": "x/y"}])
    with connect(token_broker, username, clientid, first) as old:
        assert old.subscribe(f"{PREFIX}/d1/state") == 1
        with connect(token_broker, username, clientid, signer.sign(_header(signer), narrower)) as new:
            assert old.closed_by_broker(timeout=5.0)  # taken over
            # The old connection's disconnect must not remove the new one's ACL.
            assert new.subscribe("x/y") == 1
            assert new.subscribe(f"{PREFIX}/d1/state") == NOT_AUTHORIZED


def test_an_offline_persistent_session_gets_its_messages_queued(token_broker, signer):
    # The SDK keeps a broker session (session expiry) across short disconnects: what arrives
    # meanwhile is ACL-checked for the offline client and queued, as with a dynsec account.
    username, clientid = new_session()
    token = signer.sign(_header(signer), claims_for(username, clientid))
    with connect(token_broker, username, clientid, token, clean_start=True, session_expiry=300) as client:
        assert client.subscribe(f"{PREFIX}/d1/state") == 1
        assert client.subscribe(f"{PREFIX}/+/connection") == 1
    with token_broker.admin_client() as admin:
        admin.publish(f"{PREFIX}/d2/connection", b"not for it", qos=1)
        admin.publish(f"{PREFIX}/d1/state", b"while away", qos=1)
    later = signer.sign(_header(signer), claims_for(username, clientid))
    with connect(token_broker, username, clientid, later, clean_start=False, session_expiry=300) as client:
        assert client.session_present
        message = client.receive(timeout=5.0)
        assert message is not None
        assert (message.topic, message.payload) == (f"{PREFIX}/d1/state", b"while away")
        assert client.receive(timeout=0.5) is None


def test_a_token_issued_by_the_authz_service_is_accepted(dev_pki, tmp_path):
    # The other side of the contract: amora-authz-service's own signer (token mode).
    from amora_authz._brokertoken import BrokerTokenKey  # noqa: PLC0415 - the contract's other side

    issuer = BrokerTokenKey(ec.generate_private_key(ec.SECP256R1()), issuer="amora-authz", audience="amora-broker")
    with start_broker(tmp_path, dev_pki, token_plugin=TokenPlugin(_keys(tmp_path, issuer.public_pem()))) as broker:
        username, clientid = new_session()
        now = int(time.time())
        token = issuer.issue(
            subject="user-1",
            username=username,
            client_id=clientid,
            devices=["player-1"],
            issued_at_s=now,
            expires_at_s=now + 600,
        )
        with connect(broker, username, clientid, token) as client:
            assert client.subscribe("amora/devices/player-1/state") == 1
            assert client.subscribe("amora/devices/player-2/state") == NOT_AUTHORIZED


def _keys(directory: Path, pem: bytes) -> Path:
    path = directory / "keys.pem"
    path.write_bytes(pem)
    return path


def test_public_keys_are_read_again_on_sighup(fresh_broker, signer):
    username, clientid = new_session()
    rotated = Signer()
    claims = claims_for(username, clientid)
    assert refused(fresh_broker, username, clientid, rotated.sign(_header(rotated), claims)) == NOT_AUTHORIZED
    owner = _owner(fresh_broker.token_public_keys_file)
    fresh_broker.token_public_keys_file.write_bytes(rotated.public_pem())
    fresh_broker.reload()
    assert wait_log(fresh_broker, "amora_auth: reload: 1 public key(s)")
    connect(fresh_broker, username, clientid, rotated.sign(_header(rotated), claims)).disconnect()
    assert refused(fresh_broker, username, clientid, signer.sign(_header(signer), claims)) == NOT_AUTHORIZED
    # A file that does not load keeps the keys in use.
    fresh_broker.token_public_keys_file.write_bytes(b"-----BEGIN PUBLIC KEY-----\nbroken\n")
    os.chown(fresh_broker.token_public_keys_file, *owner)
    fresh_broker.reload()
    assert wait_log(fresh_broker, "amora_auth: reload: keeping the 1 key(s) in use")
    connect(fresh_broker, username, clientid, rotated.sign(_header(rotated), claims)).disconnect()


# ---- revocation over $CONTROL/amora-auth/v1 ------------------------------------------------


def test_revocation_kicks_refuses_and_survives_a_restart(fresh_broker, signer):
    username, clientid = new_session()
    password = signer.sign(_header(signer), claims_for(username, clientid))
    until = int(time.time()) + 3600
    with RawSession(fresh_broker, username, clientid, password) as raw:
        assert raw.connack == 0
        answer = amora_auth(
            fresh_broker, [{"command": "revokeSessions", "sessions": [{"username": username, "until": until}]}]
        )
        assert answer[0]["command"] == "revokeSessions"
        assert "error" not in answer[0]
        assert raw.disconnect_reason() == ADMINISTRATIVE_ACTION
    assert refused(fresh_broker, username, clientid, password) == NOT_AUTHORIZED
    assert wait_log(fresh_broker, f"amora_auth: refused {username}: revoked")
    # persisted (0600) before the answer
    saved = json.loads(fresh_broker.revocations_file.read_text())
    assert saved == {"version": 1, "synced": True, "sessions": [{"username": username, "until": until}]}
    assert stat.S_IMODE(fresh_broker.revocations_file.stat().st_mode) == 0o600

    fresh_broker.restart()
    assert refused(fresh_broker, username, clientid, password) == NOT_AUTHORIZED
    listed = amora_auth(fresh_broker, [{"command": "listRevocations"}])[0]
    assert listed["sessions"] == [{"username": username, "until": until}]
    assert listed["count"] == 1
    # other sessions are unaffected
    other_user, other_client = new_session()
    connect(
        fresh_broker, other_user, other_client, signer.sign(_header(signer), claims_for(other_user, other_client))
    ).disconnect()


def test_revocations_expire(fresh_broker, signer):
    username, clientid = new_session()
    password = signer.sign(_header(signer), claims_for(username, clientid))
    until = int(time.time()) + 2
    amora_auth(fresh_broker, [{"command": "revokeSessions", "sessions": [{"username": username, "until": until}]}])
    assert refused(fresh_broker, username, clientid, password) == NOT_AUTHORIZED

    def accepted() -> bool | None:
        try:
            connect(fresh_broker, username, clientid, password).disconnect()
        except MqttRefused:
            return None
        return True

    # Waits for the clock to pass `until` (bounded), not for an event.
    assert wait_until(accepted, timeout=10.0, interval=0.25)
    assert time.time() >= until
    listed = amora_auth(fresh_broker, [{"command": "listRevocations"}])[0]
    assert (listed["sessions"], listed["count"]) == ([], 0)


def test_revoking_a_session_already_past_until_still_kicks_it(token_broker, signer):
    username, clientid = new_session()
    with connect(
        token_broker, username, clientid, signer.sign(_header(signer), claims_for(username, clientid))
    ) as client:
        amora_auth(token_broker, [{"command": "revokeSessions", "sessions": [{"username": username, "until": 1}]}])
        assert client.closed_by_broker(timeout=5.0)
    listed = amora_auth(token_broker, [{"command": "listRevocations"}])[0]
    assert username not in {s["username"] for s in listed["sessions"]}


def _raw_control(broker: BrokerProcess, payload: bytes) -> list[dict[str, Any]]:
    with broker.admin_client() as admin:
        assert admin.subscribe(AMORA_AUTH_TOPIC + "/response") < 0x80
        admin.publish(AMORA_AUTH_TOPIC, payload, qos=1)
        message = admin.receive(timeout=5.0)
    assert message is not None
    assert message.topic == AMORA_AUTH_TOPIC + "/response"
    responses: list[dict[str, Any]] = json.loads(message.payload)["responses"]
    return responses


@pytest.mark.parametrize(
    ("command", "error"),
    [
        ({"command": "revokeSessions"}, "sessions must be an array"),
        ({"command": "revokeSessions", "sessions": []}, "sessions is empty"),
        ({"command": "revokeSessions", "sessions": [{"username": "sess.a"}]}, "sessions[0] must be"),
        ({"command": "revokeSessions", "sessions": [{"username": "sess.a", "until": 1.5}]}, "sessions[0] must be"),
        ({"command": "revokeSessions", "sessions": [{"username": "sess.a", "until": -1}]}, "sessions[0] must be"),
        (
            {
                "command": "revokeSessions",
                "sessions": [
                    {"username": "sess.ok", "until": 9999999999},
                    {"username": "device-1", "until": 9999999999},
                ],
            },
            "sessions[1].username does not start with sess.",
        ),
        (
            {
                "command": "revokeSessions",
                "sessions": [{"username": f"sess.{i}", "until": 9999999999} for i in range(1001)],
            },
            "more than 1000 sessions",
        ),
        ({"command": "revokeSessions", "sessions": "sess.a"}, "sessions must be an array"),
        ({"command": "dropEverything"}, "Unknown command"),
    ],
)
def test_malformed_commands_get_an_error_and_change_nothing(token_broker, command, error):
    before = amora_auth(token_broker, [{"command": "listRevocations"}])[0]["sessions"]
    response = amora_auth(token_broker, [command], check=False)[0]
    assert response["command"] == command["command"]
    assert error in response["error"]
    assert amora_auth(token_broker, [{"command": "listRevocations"}])[0]["sessions"] == before


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        (b"not json", "Payload not valid JSON"),
        (b'{"commands": []} {"commands": [{"command": "listRevocations"}]}', "Payload not valid JSON"),
        (b'{"commands\x00": [{"command": "listRevocations"}]}', "Payload not valid JSON"),
        (b'{"commands": 1}', "Invalid/missing commands"),
        (b"[]", "Invalid/missing commands"),
        (b'{"commands": [{"command": "listRevocations", "correlationData": 7}]}', "correlationData must be a string"),
        (b'{"commands": ["listRevocations"]}', 'must be an object with a string "command"'),
    ],
)
def test_unreadable_control_messages_get_an_error(token_broker, payload, error):
    responses = _raw_control(token_broker, payload)
    assert len(responses) == 1
    assert error in responses[0]["error"]


def test_one_bad_command_does_not_stop_the_others(token_broker):
    username, _ = new_session()
    until = int(time.time()) + 600
    responses = amora_auth(
        token_broker,
        [
            {"command": "revokeSessions", "sessions": [{"username": "nope", "until": until}]},
            {"command": "revokeSessions", "sessions": [{"username": username, "until": until}]},
            {"command": "listRevocations"},
        ],
        check=False,
    )
    assert [("error" in r) for r in responses] == [True, False, False]
    assert {"username": username, "until": until} in responses[2]["sessions"]


# ---- start-up refusals ----------------------------------------------------------------------


def test_broker_does_not_start_without_a_usable_key(dev_pki, tmp_path):
    p384 = tmp_path / "p384.pem"
    p384.write_bytes(
        ec.generate_private_key(ec.SECP384R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(ServiceStartError) as excinfo:
        start_broker(tmp_path / "w1", dev_pki, token_plugin=TokenPlugin(p384), timeout=5.0)
    assert "is not an EC P-256 public key" in str(excinfo.value)
    private = tmp_path / "private.pem"
    private.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    with pytest.raises(ServiceStartError) as excinfo:
        start_broker(tmp_path / "w2", dev_pki, token_plugin=TokenPlugin(private), timeout=5.0)
    assert 'is "PRIVATE KEY", not "PUBLIC KEY"' in str(excinfo.value)


def test_a_key_file_others_may_write_is_refused_at_start_and_on_reload(fresh_broker, signer):
    # Whoever can write the public keys can mint tokens (security review F6).
    keys = fresh_broker.token_public_keys_file
    keys.chmod(0o666)
    fresh_broker.reload()
    kept = f"amora_auth: reload: keeping the 2 key(s) in use: public_keys file {keys} is writable"
    assert wait_log(fresh_broker, kept)
    username, clientid = new_session()
    connect(fresh_broker, username, clientid, signer.sign(_header(signer), claims_for(username, clientid))).disconnect()
    fresh_broker.stop()
    keys.chmod(0o620)
    with pytest.raises(ServiceStartError) as excinfo:
        fresh_broker.restart(timeout=5.0)
    assert "is writable by group or others (mode 620): chmod 644 it" in str(excinfo.value)


@pytest.mark.parametrize(
    ("content", "mode", "expected"),
    [
        ('{"version":1,"sessions":[]}', 0o604, "accessible by others or by a group other than the broker's (mode 604"),
        ("{not json", 0o600, "is not a deny list"),
        ('{"version":1,"sessions":[{"username":"sess.a"}]}', 0o600, "is not a deny list"),
    ],
)
def test_broker_does_not_start_with_a_bad_revocations_file(fresh_broker, content, mode, expected):
    fresh_broker.stop()
    path = fresh_broker.revocations_file
    path.write_text(content)
    path.chmod(mode)
    shutil.chown(path, *_owner(fresh_broker.state_dir))
    with pytest.raises(ServiceStartError) as excinfo:
        fresh_broker.restart(timeout=5.0)
    assert expected in str(excinfo.value)


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda c: c.replace("plugin_opt_audience ", "plugin_opt_audiance "), "unknown option plugin_opt_audiance"),
        (lambda c: _drop_line(c, "plugin_opt_issuer "), "plugin_opt_issuer is missing"),
        (lambda c: _drop_line(c, "plugin_opt_public_keys "), "plugin_opt_public_keys is missing"),
        (lambda c: _drop_line(c, "plugin_opt_revocations "), "plugin_opt_revocations is missing"),
        (lambda c: _add_option(c, "plugin_opt_max_lifetime 1h"), "plugin_opt_max_lifetime must be a number of seconds"),
        (
            lambda c: _set_option(c, "plugin_opt_public_keys", "/nonexistent/keys.pem"),
            "public_keys file /nonexistent/keys.pem cannot be read",
        ),
    ],
)
def test_broker_does_not_start_with_bad_plugin_options(fresh_broker, edit, expected):
    fresh_broker.stop()
    config = fresh_broker.config_file
    config.write_text(edit(config.read_text()))  # same file: owner and mode stay
    with pytest.raises(ServiceStartError) as excinfo:
        fresh_broker.restart(timeout=5.0)
    assert f"amora_auth: {expected}" in str(excinfo.value)


def _add_option(config: str, line: str) -> str:
    """Add an amora_auth option (right after its issuer line, before dynsec's plugin line)."""
    issuer = next(x for x in config.splitlines(keepends=True) if x.startswith("plugin_opt_issuer "))
    return config.replace(issuer, issuer + line + "\n", 1)


def test_max_lifetime_refuses_a_token_that_expires_later(fresh_broker, signer):
    # Defence in depth (security review I4): authz signs exp = the session's expiry.
    fresh_broker.stop()
    fresh_broker.config_file.write_text(
        _add_option(fresh_broker.config_file.read_text(), "plugin_opt_max_lifetime 600")
    )
    fresh_broker.restart()
    username, clientid = new_session()
    now = int(time.time())
    too_long = signer.sign(_header(signer), claims_for(username, clientid, exp=now + 3600))
    assert refused(fresh_broker, username, clientid, too_long) == NOT_AUTHORIZED
    assert wait_log(fresh_broker, f"amora_auth: refused {username}: expires later than plugin_opt_max_lifetime")
    connect(
        fresh_broker, username, clientid, signer.sign(_header(signer), claims_for(username, clientid, exp=now + 300))
    ).disconnect()


def _drop_line(config: str, prefix: str) -> str:
    return "".join(line for line in config.splitlines(keepends=True) if not line.startswith(prefix))


def _set_option(config: str, option: str, value: str) -> str:
    return "".join(
        f"{option} {value}\n" if line.startswith(f"{option} ") else line for line in config.splitlines(keepends=True)
    )


def _owner(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_uid, st.st_gid


# ---- fuzzing smoke test ---------------------------------------------------------------------


def _fuzzer_runtime_missing() -> str | None:
    if shutil.which("clang") is None:
        return "clang is not installed (apt-get install clang)"
    probe = subprocess.run(
        ["clang", "-print-file-name=libclang_rt.fuzzer-x86_64.a"],  # noqa: S607 - clang from PATH
        capture_output=True,
        text=True,
        check=False,
    )
    if not Path(probe.stdout.strip()).is_file():
        return "clang's libFuzzer runtime is missing (apt-get install libclang-rt-14-dev)"
    return None


@pytest.mark.slow
@pytest.mark.parametrize(
    ("fuzzer", "corpus"),
    [("fuzz_token", "corpus"), ("fuzz_token_nosig", "corpus"), ("fuzz_control", "corpus_control")],
)
def test_fuzzer_runs_clean_over_its_corpus(tmp_path, fuzzer, corpus):
    missing = _fuzzer_runtime_missing()
    if missing:
        pytest.skip(missing)
    source = plugin_source_dir()
    assert source is not None
    subprocess.run(["make", "-s", "-C", str(source), "fuzz"], check=True, capture_output=True, timeout=300)  # noqa: S603, S607
    work = tmp_path / "corpus"
    shutil.copytree(source / "fuzz" / corpus, work)
    result = subprocess.run(  # noqa: S603 - fixed argv
        [
            str(source / "build" / fuzzer),
            "-max_total_time=10",
            "-max_len=17000",
            "-timeout=10",
            f"-artifact_prefix={tmp_path}/",
            str(work),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "ASAN_OPTIONS": "detect_leaks=1"},
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "Done" in result.stderr
    assert not list(tmp_path.glob("crash-*"))
