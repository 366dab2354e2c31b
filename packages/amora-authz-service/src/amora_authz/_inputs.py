"""Identifiers and keys from requests: validated once, refused with a code that names the cause.

Device ids and user ids share one alphabet (``[A-Za-z0-9][A-Za-z0-9_-]{0,63}``): user
ids name broker groups (``user:{id}``), so they get the same rules as device ids. Both
are refused when they fall in a reserved account namespace (``svc.``, ``sess.``), before
the alphabet is checked, so the answer says which rule was broken.
"""

from __future__ import annotations

import base64
import binascii

from amora_authz._errors import InvalidInputError
from amora_authz._keycheck import is_degenerate_ed25519, is_degenerate_x25519
from amora_protocol import (
    SERVICE_ACCOUNT_PREFIX,
    SESSION_ID_PREFIX,
    EncryptionPublicKey,
    InvalidDeviceId,
    ProtocolError,
    VerifyKey,
    is_reserved_account_name,
    validate_device_id,
)

__all__ = ["device_id_of", "session_keys", "user_id_of"]

_ALPHABET = "1-64 characters of [A-Za-z0-9_-], starting with a letter or digit"


def _refuse_reserved(name: str, what: str) -> None:
    if is_reserved_account_name(name):
        raise InvalidInputError(
            f"{what} {name!r} is in a reserved namespace: names starting with "
            f"{SERVICE_ACCOUNT_PREFIX!r} (service accounts) or {SESSION_ID_PREFIX!r} "
            "(sessions) belong to the system; choose another",
            code="reserved_name",
        )


def device_id_of(value: str) -> str:
    """Return ``value`` as a device id.

    Raises:
        InvalidInputError: ``reserved_name`` or ``invalid_device_id``.
    """
    _refuse_reserved(value, "device id")
    try:
        return validate_device_id(value)
    except InvalidDeviceId as exc:
        raise InvalidInputError(f"invalid device id {value!r}: {_ALPHABET}", code="invalid_device_id") from exc


def user_id_of(value: str, *, what: str = "user id") -> str:
    """Return ``value`` (an issuer's ``sub``) as a user id.

    Raises:
        InvalidInputError: ``reserved_name`` or ``invalid_user_id``.
    """
    _refuse_reserved(value, what)
    try:
        return validate_device_id(value)
    except InvalidDeviceId as exc:
        raise InvalidInputError(f"invalid {what} {value!r}: {_ALPHABET}", code="invalid_user_id") from exc


def _unb64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInputError(f"{what} is not valid base64", code="invalid_key") from exc


def session_keys(signing_key: str, encryption_key: str) -> tuple[bytes, bytes]:
    """Decode and check a raw Ed25519 and a raw X25519 public key (base64).

    Raises:
        InvalidInputError: ``invalid_key``: not base64, not 32 bytes, or degenerate
            (all-zero, small-order, not a curve point).
    """
    raw_sign = _unb64(signing_key, "signing_key")
    raw_enc = _unb64(encryption_key, "encryption_key")
    try:
        VerifyKey.from_raw(raw_sign)
    except (ProtocolError, ValueError) as exc:
        raise InvalidInputError("signing_key must be a raw Ed25519 public key (32 bytes)", code="invalid_key") from exc
    try:
        EncryptionPublicKey.from_raw(raw_enc)
    except (ProtocolError, ValueError) as exc:
        raise InvalidInputError(
            "encryption_key must be a raw X25519 public key (32 bytes)", code="invalid_key"
        ) from exc
    if is_degenerate_ed25519(raw_sign):
        raise InvalidInputError(
            "signing_key is a degenerate Ed25519 key (all-zero, small-order or not a curve point): "
            "send the public key of a freshly generated key pair",
            code="invalid_key",
        )
    if is_degenerate_x25519(raw_enc):
        raise InvalidInputError(
            "encryption_key is a degenerate X25519 key (all-zero or small-order): "
            "send the public key of a freshly generated key pair",
            code="invalid_key",
        )
    return raw_sign, raw_enc
