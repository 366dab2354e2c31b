r"""Session lists: the authz service's signed word on which sessions a device may obey now.

A grant lives until it expires; a logout, an unlink or a device revocation must reach the
device sooner. The authz service therefore keeps, per device, the list of live sessions
whose users are linked to it, signs it with its grant-signing key and publishes it retained
on ``amora/devices/{device_id}/sessions`` (only the authz service may write there). A device
that holds a list refuses a command whose grant's session is not on it, and replaces its
list only by a newer one (``issued_at_ms``).

Wire form (msgpack): a 3-element array ``[body: bin, kid: str, signature: bin]``, where
``body`` is the msgpack encoding of `SessionList` and ``signature`` is Ed25519 over
``b"amora-sessions-v1\\x00" || body`` with the authz key named by ``kid``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import msgspec

from amora_protocol._errors import SchemaError, TopicMismatch
from amora_protocol._grants import open_signed
from amora_protocol._messages import DeviceId, Identifier, TimestampMs  # noqa: TC001 - msgspec reads them at run time

if TYPE_CHECKING:
    from amora_protocol._grants import KeyRing
    from amora_protocol._keys import SigningKey

__all__ = [
    "MAX_SESSION_LIST_SIZE",
    "SESSIONS_DOMAIN",
    "SessionList",
    "issue_session_list",
    "verify_session_list",
]

SESSIONS_DOMAIN: Final = b"amora-sessions-v1\x00"
MAX_SESSION_LIST_SIZE: Final = 256 * 1024
"""Largest token accepted: about 6,000 session ids of today's 37 characters."""


class SessionList(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """The sessions a device may accept commands from, as of ``issued_at_ms``.

    Attributes:
        device_id: The device the list is for (a list for another device is refused).
        issued_at_ms: When the authz service read the list from its database; a device
            replaces its list only by one with a larger value.
        sessions: Session ids; a grant whose ``session_id`` is not here is revoked.
    """

    device_id: DeviceId
    issued_at_ms: TimestampMs
    sessions: tuple[Identifier, ...] = ()

    def allows(self, session_id: str) -> bool:
        """Whether commands under a grant for ``session_id`` may run."""
        return session_id in self.sessions


_body_decoder: Final = msgspec.msgpack.Decoder(SessionList)
_encoder: Final = msgspec.msgpack.Encoder()


def issue_session_list(session_list: SessionList, issuer_key: SigningKey) -> bytes:
    """Sign ``session_list`` with the authz service's key and return the token bytes."""
    body = _encoder.encode(session_list)
    return _encoder.encode((body, issuer_key.kid, issuer_key.sign(SESSIONS_DOMAIN + body)))


def verify_session_list(token: bytes, trusted_keys: KeyRing, *, device_id: str) -> SessionList:
    """Verify a session-list token for ``device_id`` and return the list.

    Args:
        token: The MQTT payload from the device's sessions topic.
        trusted_keys: The authz keys the device trusts (the same ring as for grants).
        device_id: The device that received it.

    Raises:
        TooLarge: Over `MAX_SESSION_LIST_SIZE` (checked before parsing).
        SchemaError: Malformed token or list.
        UnknownKey: Signed by a key not in ``trusted_keys``.
        BadSignature: The signature does not verify.
        TopicMismatch: The list is for another device.
    """
    body = open_signed(token, trusted_keys, domain=SESSIONS_DOMAIN, what="session list", max_size=MAX_SESSION_LIST_SIZE)
    try:
        session_list = _body_decoder.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise SchemaError(f"malformed session list: {exc}") from exc
    if session_list.device_id != device_id:
        raise TopicMismatch(f"a session list for {session_list.device_id!r} arrived at {device_id!r}")
    return session_list
