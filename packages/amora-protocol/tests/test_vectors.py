"""The shipped test vectors verify as they say, and the package reproduces them byte for byte."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import pytest

import amora_protocol as ap

if TYPE_CHECKING:
    from types import ModuleType

VECTORS_DIR = Path(__file__).resolve().parent.parent / "vectors"
VECTORS: list[dict[str, Any]] = json.loads((VECTORS_DIR / "envelopes.json").read_text())


def _verify(vector: dict[str, Any]) -> ap.Message:
    payload = bytes.fromhex(vector["envelope_hex"])
    topic = vector["topic"]
    signer = ap.VerifyKey.from_raw(bytes.fromhex(vector["signer_public_key_hex"]))
    decrypt = None
    if "recipient_private_key_hex" in vector:
        decrypt = ap.EncryptionKey.from_raw(bytes.fromhex(vector["recipient_private_key_hex"]))
    max_size = vector.get("max_size", ap.DEFAULT_MAX_SIZE)
    if ap.parse_topic(topic).kind is ap.TopicKind.COMMANDS:
        authz = ap.VerifyKey.from_raw(bytes.fromhex(vector["authz_public_key_hex"]))
        verified = ap.verify_command(
            payload,
            topic=topic,
            content_type=vector["content_type"],
            trusted_keys={authz.kid: authz},
            now_ms=vector["now"],
            decrypt_key=decrypt,
            max_size=max_size,
        )
        assert verified.grant.signing_key == signer.raw
        return verified.command
    return ap.verify_envelope(
        payload, topic=topic, content_type=vector["content_type"], key=signer, now_ms=vector["now"], max_size=max_size
    ).message


def test_vector_file_covers_what_it_must():
    names = {v["name"] for v in VECTORS}
    for action in ap.ACTIONS:
        assert f"command-{action.__struct_config__.tag}" in names
    required = {
        "state",
        "connection-offline",
        "response",
        "command-sealed",
        "tampered-body",
        "tampered-header",
    }
    required |= {"wrong-topic", "wrong-key", "expired-state", "oversize", "truncated", "wrong-type"}
    assert required <= names
    for vector in VECTORS:
        assert {
            "name",
            "topic",
            "content_type",
            "envelope_hex",
            "signer_public_key_hex",
            "expect",
            "now",
        } <= vector.keys()
        if vector["expect"] == "valid":
            assert "message" in vector


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_vector_verifies_as_expected(vector: dict[str, Any]):
    if vector["expect"] == "valid":
        message = _verify(vector)
        assert json.loads(msgspec.json.encode(message)) == vector["message"]
    else:
        error = getattr(ap, vector["expect"])
        assert issubclass(error, ap.ProtocolError)
        with pytest.raises(error) as info:
            _verify(vector)
        assert type(info.value) is error


def test_sealed_vector_opens_to_its_plaintext():
    vector = next(v for v in VECTORS if v["name"] == "command-sealed")
    env = ap.parse_envelope(bytes.fromhex(vector["envelope_hex"]), content_type=vector["content_type"])
    assert env.header.sealed_to is not None
    assert bytes.fromhex(vector["plaintext_hex"]) not in env.body
    key = ap.EncryptionKey.from_raw(bytes.fromhex(vector["recipient_private_key_hex"]))
    assert _verify(vector) == msgspec.msgpack.decode(bytes.fromhex(vector["plaintext_hex"]), type=ap.Command)
    assert key.kid == env.header.sealed_to


def test_package_reproduces_every_unsealed_vector(vector_generator: ModuleType):
    rebuilt = {v["name"]: v for v in vector_generator.build()}
    assert rebuilt.keys() == {v["name"] for v in VECTORS}
    for vector in VECTORS:
        again = rebuilt[vector["name"]]
        if "recipient_private_key_hex" in vector:
            # HPKE draws a fresh ephemeral key: everything but the envelope bytes repeats.
            assert {k: v for k, v in again.items() if k != "envelope_hex"} == {
                k: v for k, v in vector.items() if k != "envelope_hex"
            }
        else:
            assert again == vector, vector["name"]
