from __future__ import annotations

import msgspec
import pytest

import amora_protocol as ap

NOW = 1_800_000_000_000
DEV = "player-1"


@pytest.fixture
def device_key() -> ap.SigningKey:
    return ap.SigningKey.generate()


def _state(version: int = 1, device_id: str = DEV) -> ap.DeviceState:
    return ap.DeviceState(
        device_id=device_id,
        version=version,
        status=ap.PlaybackStatus.PLAY,
        sampled_at_ms=NOW,
        elapsed_ms=1,
    )


@pytest.mark.parametrize("codec", list(ap.Codec))
def test_state_round_trip(device_key: ap.SigningKey, codec: ap.Codec):
    sender = ap.Sender(DEV, device_key, epoch=99)
    topic = ap.state_topic(DEV)
    payload = sender.encode(topic, _state(), now_ms=NOW, codec=codec)
    verified = ap.verify_envelope(payload, topic=topic, content_type=codec.value, key=device_key.public_key, now_ms=NOW)
    assert verified.message == _state()
    assert verified.header.sender == DEV
    assert verified.header.epoch == 99
    assert verified.header.seq == 0
    assert verified.header.kid == device_key.kid
    assert ap.parse_envelope(sender.encode(topic, _state(), now_ms=NOW)).header.seq == 1


def test_missing_content_type_means_msgpack_and_unknown_is_refused(device_key: ap.SigningKey):
    topic = ap.state_topic(DEV)
    payload = ap.Sender(DEV, device_key, epoch=1).encode(topic, _state(), now_ms=NOW)
    got = ap.verify_envelope(payload, topic=topic, content_type=None, key=device_key.public_key, now_ms=NOW)
    assert got.message == _state()
    with pytest.raises(ap.SchemaError, match="content type"):
        ap.parse_envelope(payload, content_type="text/plain")
    with pytest.raises(ap.SchemaError):
        ap.parse_envelope(payload, content_type=ap.Codec.JSON.value)


def test_every_flipped_byte_is_refused(device_key: ap.SigningKey):
    topic = ap.state_topic(DEV)
    payload = ap.Sender(DEV, device_key, epoch=1).encode(topic, _state(), now_ms=NOW)
    for i in range(len(payload)):
        bad = payload[:i] + bytes([payload[i] ^ 0x40]) + payload[i + 1 :]
        with pytest.raises(ap.ProtocolError):
            ap.verify_envelope(bad, topic=topic, content_type=None, key=device_key.public_key, now_ms=NOW)


def test_topic_is_bound_into_the_signature(device_key: ap.SigningKey):
    # A device's own valid state, replayed onto another device's topic with a matching body.
    other = "player-2"
    payload = ap.Sender(other, device_key, epoch=1).encode(ap.state_topic(other), _state(device_id=other), now_ms=NOW)
    with pytest.raises(ap.BadSignature):
        ap.verify_envelope(
            payload,
            topic=ap.state_topic(DEV),
            content_type=None,
            key=device_key.public_key,
            now_ms=NOW,
        )


def test_message_must_match_topic_device_and_type(device_key: ap.SigningKey):
    sender = ap.Sender(DEV, device_key, epoch=1)
    with pytest.raises(ap.TopicMismatch):
        sender.encode(ap.commands_topic(DEV), _state(), now_ms=NOW)
    # Signed correctly for its topic but naming another device inside.
    payload = sender.encode(ap.state_topic(DEV), _state(device_id="player-9"), now_ms=NOW)
    with pytest.raises(ap.TopicMismatch):
        ap.verify_envelope(
            payload,
            topic=ap.state_topic(DEV),
            content_type=None,
            key=device_key.public_key,
            now_ms=NOW,
        )


def test_key_ring_lookup_and_unknown_key(device_key: ap.SigningKey):
    topic = ap.state_topic(DEV)
    payload = ap.Sender(DEV, device_key, epoch=1).encode(topic, _state(), now_ms=NOW)
    other = ap.SigningKey.generate().public_key
    ring = ap.keyring([other, device_key.public_key])
    assert ap.verify_envelope(payload, topic=topic, content_type=None, key=ring, now_ms=NOW).message == _state()
    with pytest.raises(ap.UnknownKey) as info:
        ap.verify_envelope(payload, topic=topic, content_type=None, key=ap.keyring([other]), now_ms=NOW)
    assert info.value.kid == device_key.kid


def test_size_limit_is_checked_before_parsing():
    with pytest.raises(ap.TooLarge) as info:
        ap.parse_envelope(b"\xff" * 101, max_size=100)
    assert (info.value.size, info.value.limit) == (101, 100)


def test_envelope_expiry(device_key: ap.SigningKey):
    topic = ap.state_topic(DEV)
    payload = ap.Sender(DEV, device_key, epoch=1).encode(topic, _state(), now_ms=NOW, expires_at_ms=NOW + 10)
    key = device_key.public_key
    assert ap.verify_envelope(payload, topic=topic, content_type=None, key=key, now_ms=NOW + 9).message == _state()
    with pytest.raises(ap.Expired) as info:
        ap.verify_envelope(payload, topic=topic, content_type=None, key=key, now_ms=NOW + 10)
    assert info.value.expired_at_ms == NOW + 10


class TestCommands:
    @pytest.fixture
    def setup(self):
        authz = ap.SigningKey.generate()
        session = ap.SigningKey.generate()
        device_enc = ap.EncryptionKey.generate()
        grant = ap.Grant(
            grant_id="g1",
            subject="alice",
            session_id="s1",
            signing_key=session.public_key.raw,
            devices=(DEV,),
            rights=(ap.Right.WATCH, ap.Right.CONTROL),
            issued_at_ms=NOW,
            expires_at_ms=NOW + 60_000,
        )
        return authz, session, device_enc, grant

    def _cmd(self, action: ap.Action | None = None) -> ap.Command:
        return ap.Command(id="c1", issued_at_ms=NOW, expires_at_ms=NOW + 5_000, action=action or ap.Pause())

    def test_round_trip_plain_and_sealed(self, setup):
        authz, session, device_enc, grant = setup
        token = ap.issue_grant(grant, authz)
        topic = ap.commands_topic(DEV)
        sender = ap.Sender("s1", session, epoch=3)
        trusted = ap.keyring([authz.public_key])
        for seal in (None, device_enc.public_key):
            payload = sender.encode(topic, self._cmd(ap.SetVolume(volume=7)), now_ms=NOW, grant=token, seal_to=seal)
            got = ap.verify_command(
                payload,
                topic=topic,
                content_type=None,
                trusted_keys=trusted,
                now_ms=NOW,
                decrypt_key=device_enc,
            )
            assert got.command.action == ap.SetVolume(volume=7)
            assert got.grant == grant
            assert got.header.exp_ms == NOW + 5_000

    def test_sealed_body_hides_the_plaintext_and_needs_the_right_key(self, setup):
        authz, session, device_enc, grant = setup
        topic = ap.commands_topic(DEV)
        cmd = ap.Command(id="secret-cmd-id", issued_at_ms=NOW, expires_at_ms=NOW + 5_000, action=ap.Play())
        payload = ap.Sender("s1", session, epoch=3).encode(
            topic,
            cmd,
            now_ms=NOW,
            grant=ap.issue_grant(grant, authz),
            seal_to=device_enc.public_key,
        )
        assert b"secret-cmd-id" not in payload
        trusted = ap.keyring([authz.public_key])
        with pytest.raises(ap.DecryptionError):
            ap.verify_command(payload, topic=topic, content_type=None, trusted_keys=trusted, now_ms=NOW)
        with pytest.raises(ap.UnknownKey):
            ap.verify_command(
                payload,
                topic=topic,
                content_type=None,
                trusted_keys=trusted,
                now_ms=NOW,
                decrypt_key=ap.EncryptionKey.generate(),
            )

    def test_sealed_ciphertext_moved_to_another_header_does_not_open(self, setup):
        authz, session, device_enc, grant = setup
        topic = ap.commands_topic(DEV)
        token = ap.issue_grant(grant, authz)
        sender = ap.Sender("s1", session, epoch=3)
        first = ap.parse_envelope(
            sender.encode(topic, self._cmd(), now_ms=NOW, grant=token, seal_to=device_enc.public_key)
        )
        second = ap.parse_envelope(
            sender.encode(topic, self._cmd(), now_ms=NOW, grant=token, seal_to=device_enc.public_key)
        )
        # The session re-signs the first ciphertext under the second header: HPKE's info differs.
        spliced = msgspec.msgpack.encode(
            (
                second.header_bytes,
                first.body,
                session.sign(ap.signed_bytes(topic, second.header_bytes, first.body)),
            )
        )
        with pytest.raises(ap.DecryptionError):
            ap.verify_command(
                spliced,
                topic=topic,
                content_type=None,
                trusted_keys=ap.keyring([authz.public_key]),
                now_ms=NOW,
                decrypt_key=device_enc,
            )

    @pytest.mark.parametrize(
        "problem",
        ["no-grant", "untrusted", "other-device", "watch-only", "other-session", "other-key"],
    )
    def test_grant_problems_are_refused(self, setup, problem: str):
        authz, session, _, grant = setup
        signer = session
        sender_id = "s1"
        issuer = authz
        if problem == "untrusted":
            issuer = ap.SigningKey.generate()
        elif problem == "other-device":
            grant = msgspec.structs.replace(grant, devices=("player-2",))
        elif problem == "watch-only":
            grant = msgspec.structs.replace(grant, rights=(ap.Right.WATCH,))
        elif problem == "other-session":
            sender_id = "s2"
        elif problem == "other-key":
            signer = ap.SigningKey.generate()
        token = None if problem == "no-grant" else ap.issue_grant(grant, issuer)
        topic = ap.commands_topic(DEV)
        payload = ap.Sender(sender_id, signer, epoch=1).encode(topic, self._cmd(), now_ms=NOW, grant=token)
        expected = {"untrusted": ap.UnknownKey, "other-key": ap.UnknownKey}.get(problem, ap.Unauthorized)
        with pytest.raises(expected):
            ap.verify_command(
                payload,
                topic=topic,
                content_type=None,
                trusted_keys=ap.keyring([authz.public_key]),
                now_ms=NOW,
            )

    def test_commands_are_not_accepted_by_verify_envelope(self, setup):
        authz, session, _, grant = setup
        topic = ap.commands_topic(DEV)
        payload = ap.Sender("s1", session, epoch=1).encode(
            topic, self._cmd(), now_ms=NOW, grant=ap.issue_grant(grant, authz)
        )
        with pytest.raises(ap.TopicMismatch):
            ap.verify_envelope(payload, topic=topic, content_type=None, key=session.public_key, now_ms=NOW)

    @pytest.mark.parametrize(
        ("problem", "error", "authenticated"),
        [
            ("expired-grant", ap.Expired, True),
            ("expired-envelope", ap.Expired, True),
            ("other-device", ap.Unauthorized, True),
            ("watch-only", ap.Unauthorized, True),
            ("other-session", ap.Unauthorized, True),
            ("untrusted", ap.UnknownKey, False),
            ("other-key", ap.UnknownKey, False),
            ("forged-signature", ap.BadSignature, False),
        ],
    )
    def test_only_refusals_after_authentication_name_the_command(
        self, setup, problem: str, error: type[ap.ProtocolError], *, authenticated: bool
    ):
        authz, session, _, grant = setup
        signer, sender_id, issuer, now = session, "s1", authz, NOW
        if problem == "expired-grant":
            grant = msgspec.structs.replace(grant, expires_at_ms=NOW + 1)
            now = NOW + 2
        elif problem == "expired-envelope":
            now = NOW + 5_000
        elif problem == "other-device":
            grant = msgspec.structs.replace(grant, devices=("player-2",))
        elif problem == "watch-only":
            grant = msgspec.structs.replace(grant, rights=(ap.Right.WATCH,))
        elif problem == "other-session":
            sender_id = "s2"
        elif problem == "untrusted":
            issuer = ap.SigningKey.generate()
        elif problem == "other-key":
            signer = ap.SigningKey.generate()
        topic = ap.commands_topic(DEV)
        payload = ap.Sender(sender_id, signer, epoch=1).encode(
            topic, self._cmd(), now_ms=NOW, grant=ap.issue_grant(grant, issuer)
        )
        if problem == "forged-signature":
            payload = payload[:-5] + bytes(5)
        with pytest.raises(error) as info:
            ap.verify_command(
                payload, topic=topic, content_type=None, trusted_keys=ap.keyring([authz.public_key]), now_ms=now
            )
        assert info.value.command_id == ("c1" if authenticated else None)


def test_unauthenticated_id_is_a_digest_not_an_echo():
    payload = b"c1-chosen-by-an-attacker"
    got = ap.unauthenticated_id(payload)
    assert got.startswith("unauthenticated:")
    assert len(got) == len("unauthenticated:") + 32
    assert b"c1" not in got.encode()
    assert got == ap.unauthenticated_id(payload)
    assert got != ap.unauthenticated_id(payload + b"!")


def test_an_authenticated_command_with_an_unknown_action_names_its_id():
    authz, session = ap.SigningKey.generate(), ap.SigningKey.generate()
    grant = ap.Grant(
        grant_id="g1",
        subject="alice",
        session_id="s1",
        signing_key=session.public_key.raw,
        devices=(DEV,),
        rights=(ap.Right.CONTROL,),
        issued_at_ms=NOW,
        expires_at_ms=NOW + 60_000,
    )
    topic = ap.commands_topic(DEV)
    command = ap.Command(id="c-new", issued_at_ms=NOW, expires_at_ms=NOW + 5_000, action=ap.Pause())
    header = ap.parse_envelope(
        ap.Sender("s1", session, epoch=1).encode(topic, command, now_ms=NOW, grant=ap.issue_grant(grant, authz))
    ).header_bytes
    body = msgspec.msgpack.encode({**msgspec.to_builtins(command), "action": {"type": "crossfade"}})
    signed = msgspec.msgpack.encode((header, body, session.sign(ap.signed_bytes(topic, header, body))))
    with pytest.raises(ap.UnsupportedAction) as info:
        ap.verify_command(
            signed, topic=topic, content_type=None, trusted_keys=ap.keyring([authz.public_key]), now_ms=NOW
        )
    assert info.value.command_id == "c-new"
    # The same body under a forged signature is refused before it is read: no id.
    forged = msgspec.msgpack.encode((header, body, bytes(64)))
    with pytest.raises(ap.BadSignature) as bad:
        ap.verify_command(
            forged, topic=topic, content_type=None, trusted_keys=ap.keyring([authz.public_key]), now_ms=NOW
        )
    assert bad.value.command_id is None
