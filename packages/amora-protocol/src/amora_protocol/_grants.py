r"""Grants: the authz service's signed statement of what a session may do with which devices.

Wire form (msgpack): a 3-element array ``[body: bin, kid: str, signature: bin]`` where
``body`` is the msgpack encoding of `Grant` and ``signature`` is Ed25519 over
``b"amora-grant-v1\\x00" || body`` with the issuer's key named by ``kid``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final

import msgspec

from amora_protocol._errors import BadSignature, Expired, SchemaError, Unauthorized, UnknownKey
from amora_protocol._keys import SigningKey, VerifyKey
from amora_protocol._messages import Grant, Right

__all__ = ["GRANT_DOMAIN", "KeyRing", "issue_grant", "keyring", "verify_grant"]

GRANT_DOMAIN: Final = b"amora-grant-v1\x00"
MAX_GRANT_SIZE: Final = 16 * 1024

KeyRing = Mapping[str, VerifyKey]
"""Trusted public keys by key id (several during a rotation)."""

_token_decoder = msgspec.msgpack.Decoder(tuple[bytes, str, bytes])
_grant_decoder = msgspec.msgpack.Decoder(Grant)
_encoder = msgspec.msgpack.Encoder()


def keyring(keys: Iterable[VerifyKey]) -> dict[str, VerifyKey]:
    """Index ``keys`` by key id."""
    return {key.kid: key for key in keys}


def issue_grant(grant: Grant, issuer_key: SigningKey) -> bytes:
    """Sign ``grant`` with the issuer's key and return the token bytes."""
    body = _encoder.encode(grant)
    return _encoder.encode((body, issuer_key.kid, issuer_key.sign(GRANT_DOMAIN + body)))


def verify_grant(
    token: bytes,
    trusted_keys: KeyRing,
    *,
    now_ms: int,
    device_id: str | None = None,
    right: Right | None = None,
) -> Grant:
    """Verify a grant token and return the grant.

    Args:
        token: The bytes from `issue_grant`.
        trusted_keys: The issuer keys this verifier trusts, by key id.
        now_ms: The verification time (ms since the Unix epoch).
        device_id: If given, the grant must list this device.
        right: If given, the grant must carry this right.

    Raises:
        SchemaError: The token is malformed.
        UnknownKey: Signed by a key not in ``trusted_keys``.
        BadSignature: The signature does not verify.
        Expired: The grant is past its expiry.
        Unauthorized: The grant does not cover ``device_id`` or ``right``.
    """
    if len(token) > MAX_GRANT_SIZE:
        raise SchemaError(f"grant of {len(token)} bytes exceeds {MAX_GRANT_SIZE}")
    try:
        body, kid, signature = _token_decoder.decode(token)
    except (
        msgspec.DecodeError,
        UnicodeDecodeError,
    ) as exc:  # msgspec raises the latter for bad UTF-8
        raise SchemaError(f"malformed grant token: {exc}") from exc
    key = trusted_keys.get(kid)
    if key is None:
        raise UnknownKey(kid, "grant issuer key")
    if not key.verify(signature, GRANT_DOMAIN + body):
        raise BadSignature("grant signature does not verify")
    try:
        grant = _grant_decoder.decode(body)
    except (
        msgspec.DecodeError,
        UnicodeDecodeError,
    ) as exc:  # msgspec raises the latter for bad UTF-8
        raise SchemaError(f"malformed grant: {exc}") from exc
    if now_ms >= grant.expires_at_ms:
        raise Expired("grant", grant.expires_at_ms, now_ms)
    if device_id is not None and device_id not in grant.devices:
        raise Unauthorized(f"grant {grant.grant_id} does not cover device {device_id!r}")
    if right is not None and right not in grant.rights:
        raise Unauthorized(f"grant {grant.grant_id} does not carry the right {right.value!r}")
    return grant
