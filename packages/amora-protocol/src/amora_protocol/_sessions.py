"""The authz service's session exchange (``POST /v1/sessions``): the published contract.

The authz service encodes these values and every client (the SDK, other teams' apps)
decodes them, so the schema lives here, versioned with the protocol, and nowhere else.
Keys and grants are standard base64 of their raw bytes; times are milliseconds since the
Unix epoch. Unknown fields are ignored on decode, so the service may add fields.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from amora_protocol._errors import SchemaError

__all__ = [
    "AuthzPublicKey",
    "BrokerCredential",
    "DevicePublicKeys",
    "SessionRequest",
    "SessionResponse",
    "decode_session_response",
]

Base64Key = Annotated[str, msgspec.Meta(max_length=64)]
"""A 32-byte raw key in standard base64 (44 characters; a little slack)."""


class SessionRequest(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """``POST /v1/sessions`` body: the session's public keys (base64 of raw bytes).

    Attributes:
        signing_key: The session's Ed25519 public key (signs its commands; named in the grant).
        encryption_key: The session's X25519 public key (sealed answers are sealed to it).
        client_name: A free label for logs (at most 200 characters).
    """

    signing_key: Base64Key
    encryption_key: Base64Key
    client_name: Annotated[str, msgspec.Meta(max_length=200)] | None = None


class BrokerCredential(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """How the app connects to the brokers.

    Attributes:
        endpoints: ``mqtts://host:port`` (and ``wss://...`` for web apps), preferred first.
        username: The broker username (the session id).
        password: The broker password.
        client_id: The MQTT client id the broker's access rules require (the session id).
    """

    endpoints: tuple[str, ...]
    username: str
    password: str
    client_id: str


class DevicePublicKeys(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A device and the public keys its messages are checked against.

    Attributes:
        device_id: The device id.
        signing_key: Its Ed25519 public key (verifies its state, status, responses).
        encryption_key: Its X25519 public key (commands can be sealed to it).
    """

    device_id: str
    signing_key: str
    encryption_key: str


class AuthzPublicKey(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One of the authz service's grant-signing public keys.

    Attributes:
        kid: Its key id (`key_id`).
        public_key: The raw Ed25519 public key, base64.
    """

    kid: str
    public_key: str


class SessionResponse(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A created or refreshed session.

    Attributes:
        session_id: The session id (``sess.`` prefix; also the sender id of its commands).
        expires_at: When the session and its grant end, in ms since the epoch.
        broker: Where and as whom to connect.
        grant: The signed grant (base64), sent along with every command.
        devices: The devices the session may use, with their public keys.
        authz_keys: Every grant-signing public key of the service (several during a rotation).
    """

    session_id: str
    expires_at: int
    broker: BrokerCredential
    grant: str
    devices: tuple[DevicePublicKeys, ...]
    authz_keys: tuple[AuthzPublicKey, ...]


def decode_session_response(body: bytes | str) -> SessionResponse:
    """Decode the JSON body of a ``POST /v1/sessions`` (or refresh) answer.

    Raises:
        SchemaError: The body is not JSON or does not match `SessionResponse` (the message
            names the field).
    """
    try:
        return msgspec.json.decode(body, type=SessionResponse)
    except msgspec.ValidationError as exc:
        raise SchemaError(f"invalid session answer: {exc}") from exc
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise SchemaError(f"malformed session answer: {exc}") from exc
