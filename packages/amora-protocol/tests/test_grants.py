from __future__ import annotations

import msgspec
import pytest

import amora_protocol as ap

NOW = 1_800_000_000_000


def _grant(**changes: object) -> ap.Grant:
    grant = ap.Grant(
        grant_id="g1",
        subject="alice",
        session_id="s1",
        signing_key=bytes(32),
        devices=("p1", "p2"),
        rights=(ap.Right.WATCH,),
        issued_at_ms=NOW,
        expires_at_ms=NOW + 1_000,
    )
    return msgspec.structs.replace(grant, **changes)


def test_issue_and_verify_with_rotation():
    old, new = ap.SigningKey.generate(), ap.SigningKey.generate()
    trusted = ap.keyring([old.public_key, new.public_key])
    for issuer in (old, new):
        assert ap.verify_grant(ap.issue_grant(_grant(), issuer), trusted, now_ms=NOW) == _grant()
    # After rotation the old key is dropped from the trusted set.
    with pytest.raises(ap.UnknownKey):
        ap.verify_grant(ap.issue_grant(_grant(), old), ap.keyring([new.public_key]), now_ms=NOW)


def test_expiry_device_and_right():
    issuer = ap.SigningKey.generate()
    token = ap.issue_grant(_grant(), issuer)
    trusted = ap.keyring([issuer.public_key])
    got = ap.verify_grant(token, trusted, now_ms=NOW + 999, device_id="p2", right=ap.Right.WATCH)
    assert got == _grant()
    with pytest.raises(ap.Expired):
        ap.verify_grant(token, trusted, now_ms=NOW + 1_000)
    with pytest.raises(ap.Unauthorized, match="p3"):
        ap.verify_grant(token, trusted, now_ms=NOW, device_id="p3")
    with pytest.raises(ap.Unauthorized, match="control"):
        ap.verify_grant(token, trusted, now_ms=NOW, right=ap.Right.CONTROL)


def test_tampered_and_malformed_tokens():
    issuer = ap.SigningKey.generate()
    trusted = ap.keyring([issuer.public_key])
    _, kid, sig = msgspec.msgpack.decode(ap.issue_grant(_grant(), issuer), type=tuple[bytes, str, bytes])
    widened = msgspec.msgpack.encode(_grant(devices=("p1", "p2", "p3")))
    with pytest.raises(ap.BadSignature):
        ap.verify_grant(msgspec.msgpack.encode((widened, kid, sig)), trusted, now_ms=NOW)
    for junk in (
        b"",
        b"\x93",
        b"not msgpack",
        msgspec.msgpack.encode((b"x", kid, issuer.sign(ap.GRANT_DOMAIN + b"x"))),
    ):
        with pytest.raises(ap.SchemaError):
            ap.verify_grant(junk, trusted, now_ms=NOW)
    with pytest.raises(ap.SchemaError):
        ap.verify_grant(b"\x00" * 20_000, trusted, now_ms=NOW)
