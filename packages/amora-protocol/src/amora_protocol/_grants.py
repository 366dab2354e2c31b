r"""Grants: the authz service's signed statement of what a session may do with which devices.

Wire form (msgpack): a 3-element array ``[body: bin, kid: str, signature: bin]`` where
``body`` is the msgpack encoding of `Grant` and ``signature`` is Ed25519 over
``b"amora-grant-v1\\x00" || body`` with the issuer's key named by ``kid``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final

import msgspec

from amora_protocol._errors import BadSignature, Expired, SchemaError, TooLarge, Unauthorized, UnknownKey
from amora_protocol._keys import SigningKey, VerifyKey
from amora_protocol._messages import Grant, Right

__all__ = [
    "GRANT_DOMAIN",
    "KeyRing",
    "check_grant",
    "issue_grant",
    "keyring",
    "open_grant",
    "open_signed",
    "verify_grant",
]

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


def open_signed(token: bytes, trusted_keys: KeyRing, *, domain: bytes, what: str, max_size: int) -> bytes:
    """Check a ``[body, kid, signature]`` token signed by a trusted key; return ``body``.

    Grants and session lists share this form; ``domain`` keeps one from passing as the other.

    Raises:
        TooLarge: Over ``max_size`` (checked before parsing).
        SchemaError: The token is malformed.
        UnknownKey: Signed by a key not in ``trusted_keys``.
        BadSignature: The signature does not verify.
    """
    if len(token) > max_size:
        raise TooLarge(len(token), max_size)
    try:
        body, kid, signature = _token_decoder.decode(token)
    except (
        msgspec.DecodeError,
        UnicodeDecodeError,
    ) as exc:  # msgspec raises the latter for bad UTF-8
        raise SchemaError(f"malformed {what} token: {exc}") from exc
    key = trusted_keys.get(kid)
    if key is None:
        raise UnknownKey(kid, f"{what} issuer key")
    if not key.verify(signature, domain + body):
        raise BadSignature(f"{what} signature does not verify")
    return body


def open_grant(token: bytes, trusted_keys: KeyRing) -> Grant:
    """Check a grant token's issuer signature and decode it, without judging its content.

    `verify_command` uses this to authenticate a command's sender first and authorise it
    after (`check_grant`), so that an authenticated sender's refusal can name its command.

    Raises:
        SchemaError: The token is malformed (also when it is over 16 KiB).
        UnknownKey: Signed by a key not in ``trusted_keys``.
        BadSignature: The signature does not verify.
    """
    try:
        body = open_signed(token, trusted_keys, domain=GRANT_DOMAIN, what="grant", max_size=MAX_GRANT_SIZE)
    except TooLarge as exc:
        raise SchemaError(f"grant of {exc.size} bytes exceeds {MAX_GRANT_SIZE}") from exc
    try:
        return _grant_decoder.decode(body)
    except (
        msgspec.DecodeError,
        UnicodeDecodeError,
    ) as exc:  # msgspec raises the latter for bad UTF-8
        raise SchemaError(f"malformed grant: {exc}") from exc


def check_grant(
    grant: Grant,
    *,
    now_ms: int,
    device_id: str | None = None,
    right: Right | None = None,
) -> Grant:
    """Check an opened grant's expiry, device and right; return it unchanged.

    Raises:
        Expired: The grant is past its expiry.
        Unauthorized: The grant does not cover ``device_id`` or ``right``.
    """
    if now_ms >= grant.expires_at_ms:
        raise Expired("grant", grant.expires_at_ms, now_ms)
    if device_id is not None and device_id not in grant.devices:
        raise Unauthorized(f"grant {grant.grant_id} does not cover device {device_id!r}")
    if right is not None and right not in grant.rights:
        raise Unauthorized(f"grant {grant.grant_id} does not carry the right {right.value!r}")
    return grant


def verify_grant(
    token: bytes,
    trusted_keys: KeyRing,
    *,
    now_ms: int,
    device_id: str | None = None,
    right: Right | None = None,
) -> Grant:
    """Verify a grant token and return the grant (`open_grant`, then `check_grant`).

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
    return check_grant(open_grant(token, trusted_keys), now_ms=now_ms, device_id=device_id, right=right)
