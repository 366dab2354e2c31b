"""The store's records: devices, certificates, user-device links, sessions (frozen values).

They are what `amora_authz._store.Store` reads and writes; the rows' text encodings (base64
keys, decimal serials) stay inside the store.
"""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING, Any

import msgspec

if TYPE_CHECKING:
    import sqlalchemy as sa

__all__ = ["Certificate", "Device", "Link", "Session", "b64_text", "device_of_row", "session_of_row"]


class Device(msgspec.Struct, frozen=True, kw_only=True):
    """A registered player.

    Attributes:
        device_id: the device id (also its certificate CN and broker client id).
        signing_key: raw Ed25519 public key (32 bytes).
        encryption_key: raw X25519 public key (32 bytes).
        created_at_ms: registration time.
        revoked_at_ms: revocation time, ``None`` while active.
    """

    device_id: str
    signing_key: bytes
    encryption_key: bytes
    created_at_ms: int
    revoked_at_ms: int | None = None

    @property
    def revoked(self) -> bool:
        """Whether the device has been revoked."""
        return self.revoked_at_ms is not None


class Certificate(msgspec.Struct, frozen=True, kw_only=True):
    """A client certificate issued to a device (serial as decimal text)."""

    serial: int
    device_id: str
    issued_at_ms: int
    not_after_ms: int
    revoked_at_ms: int | None = None


class Link(msgspec.Struct, frozen=True, kw_only=True):
    """A user's right to use a device."""

    user_sub: str
    device_id: str
    created_at_ms: int


class Session(msgspec.Struct, frozen=True, kw_only=True):
    """An app session: one broker client (username = client id = session id)."""

    session_id: str
    user_sub: str
    client_name: str | None
    signing_key: bytes
    encryption_key: bytes
    created_at_ms: int
    expires_at_ms: int


def b64_text(raw: bytes) -> str:
    """Standard base64 text of raw key bytes (the store's column encoding)."""
    return base64.b64encode(raw).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text)


def device_of_row(row: sa.Row[Any]) -> Device:
    """A `Device` from a row of the devices table."""
    return Device(
        device_id=row.device_id,
        signing_key=_unb64(row.signing_key),
        encryption_key=_unb64(row.encryption_key),
        created_at_ms=int(row.created_at_ms),
        revoked_at_ms=None if row.revoked_at_ms is None else int(row.revoked_at_ms),
    )


def session_of_row(row: sa.Row[Any]) -> Session:
    """A `Session` from a row of the sessions table."""
    return Session(
        session_id=row.session_id,
        user_sub=row.user_sub,
        client_name=row.client_name,
        signing_key=_unb64(row.signing_key),
        encryption_key=_unb64(row.encryption_key),
        created_at_ms=int(row.created_at_ms),
        expires_at_ms=int(row.expires_at_ms),
    )
