from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import pytest

import amora_protocol as ap

if TYPE_CHECKING:
    from types import ModuleType

NOW = 1_800_000_000_000


def _list(**changes: object) -> ap.SessionList:
    base = ap.SessionList(device_id="p1", issued_at_ms=NOW, sessions=("sess.a", "sess.b"))
    return msgspec.structs.replace(base, **changes)


def test_issue_verify_and_allows():
    authz = ap.SigningKey.generate()
    token = ap.issue_session_list(_list(), authz)
    got = ap.verify_session_list(token, ap.keyring([authz.public_key]), device_id="p1")
    assert got == _list()
    assert got.allows("sess.a")
    assert not got.allows("sess.c")
    assert not ap.SessionList(device_id="p1", issued_at_ms=NOW).allows("sess.a")


def test_refusals_are_specific():
    authz, other = ap.SigningKey.generate(), ap.SigningKey.generate()
    trusted = ap.keyring([authz.public_key])
    token = ap.issue_session_list(_list(), authz)
    with pytest.raises(ap.UnknownKey):
        ap.verify_session_list(ap.issue_session_list(_list(), other), trusted, device_id="p1")
    with pytest.raises(ap.BadSignature):
        ap.verify_session_list(token[:-1] + bytes([token[-1] ^ 1]), trusted, device_id="p1")
    with pytest.raises(ap.TopicMismatch, match="p2"):
        ap.verify_session_list(token, trusted, device_id="p2")
    with pytest.raises(ap.SchemaError):
        ap.verify_session_list(b"\x93\x01", trusted, device_id="p1")
    with pytest.raises(ap.TooLarge):
        ap.verify_session_list(b"\x00" * (ap.MAX_SESSION_LIST_SIZE + 1), trusted, device_id="p1")


def test_a_grant_signature_is_not_a_session_list_signature():
    """Domain separation: a grant body re-labelled as a session list does not verify."""
    authz = ap.SigningKey.generate()
    body = msgspec.msgpack.encode(_list())
    signature = authz.sign(ap.GRANT_DOMAIN + body)
    token = msgspec.msgpack.encode((body, authz.kid, signature))
    with pytest.raises(ap.BadSignature):
        ap.verify_session_list(token, ap.keyring([authz.public_key]), device_id="p1")


def test_the_sessions_topic_is_per_device_and_validated():
    assert ap.sessions_topic("p1") == "amora/devices/p1/sessions"
    with pytest.raises(ap.InvalidDeviceId):
        ap.sessions_topic("+")


VECTORS_DIR = Path(__file__).resolve().parent.parent / "vectors"
VECTORS: list[dict[str, Any]] = json.loads((VECTORS_DIR / "session_lists.json").read_text())


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_session_list_vector_verifies_as_expected(vector: dict[str, Any]):
    authz = ap.VerifyKey.from_raw(bytes.fromhex(vector["authz_public_key_hex"]))
    device_id = ap.parse_topic(vector["topic"].removesuffix("/sessions") + "/state").device_id
    assert vector["topic"] == ap.sessions_topic(device_id)

    def verify() -> ap.SessionList:
        return ap.verify_session_list(bytes.fromhex(vector["envelope_hex"]), {authz.kid: authz}, device_id=device_id)

    if vector["expect"] == "valid":
        assert json.loads(msgspec.json.encode(verify())) == vector["message"]
    else:
        with pytest.raises(getattr(ap, vector["expect"])) as info:
            verify()
        assert type(info.value).__name__ == vector["expect"]


def test_session_list_vectors_are_reproduced_byte_for_byte(vector_generator: ModuleType):
    assert vector_generator.build_session_lists() == VECTORS
    assert {v["name"] for v in VECTORS} >= {"session-list", "session-list-empty", "session-list-grant-domain"}
