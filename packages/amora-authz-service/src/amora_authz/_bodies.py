"""The HTTP API's request and response bodies (msgspec), apart from the session exchange.

The session exchange's bodies (``SessionRequest``, ``SessionResponse`` and their parts)
are the published contract and live in `amora_protocol`, so that clients decode exactly
what is sent. Limits on sizes are part of the schema, so oversized fields answer 422.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from amora_authz._validation import FieldError  # noqa: TC001 - msgspec resolves field types at runtime
from amora_protocol import AuthzPublicKey  # noqa: TC001 - msgspec resolves field types at runtime

__all__ = [
    "DevTokenRequest",
    "DevTokenResponse",
    "DeviceRegisteredResponse",
    "DeviceRegistration",
    "DeviceUsers",
    "ErrorBody",
    "KeysDocument",
    "LinkResponse",
    "RevokedResponse",
    "UserDevices",
]

Base64Key = Annotated[str, msgspec.Meta(max_length=64)]
"""A 32-byte raw key in standard base64 (44 characters; a little slack)."""


class DeviceRegistration(msgspec.Struct, frozen=True):
    """Admin: register a device (keys as base64 of raw bytes; CSR as PEM)."""

    device_id: Annotated[str, msgspec.Meta(max_length=64)]
    signing_key: Base64Key
    encryption_key: Base64Key
    csr: Annotated[str, msgspec.Meta(max_length=16_384)] | None = None


class DeviceRegisteredResponse(msgspec.Struct, frozen=True):
    """The registered device and its certificate (PEM) when a CSR was sent."""

    device_id: str
    certificate: str | None
    serial: str | None


class RevokedResponse(msgspec.Struct, frozen=True):
    """A revoked device and the certificate serials added to the CRL."""

    device_id: str
    revoked_serials: list[str]


class LinkResponse(msgspec.Struct, frozen=True):
    """A user-device link."""

    user: str
    device_id: str
    created: bool


class UserDevices(msgspec.Struct, frozen=True):
    """A user's devices."""

    user: str
    devices: list[str]


class DeviceUsers(msgspec.Struct, frozen=True):
    """A device's users."""

    device_id: str
    users: list[str]


class KeysDocument(msgspec.Struct, frozen=True):
    """``/.well-known/amora-keys``: grant-signing public keys."""

    keys: tuple[AuthzPublicKey, ...]


class ErrorBody(msgspec.Struct, frozen=True, omit_defaults=True):
    """Every error answer (``brokers``: those behind, on ``change_pending``)."""

    code: str
    message: str
    brokers: list[str] | None = None
    errors: list[FieldError] | None = None  # 422: each invalid field's path and reason


class DevTokenRequest(msgspec.Struct, frozen=True):
    """Development issuer: a token for a named development user."""

    username: Annotated[str, msgspec.Meta(max_length=200)]


class DevTokenResponse(msgspec.Struct, frozen=True):
    """Development issuer: the token."""

    access_token: str
    token_type: str
    expires_in: int
