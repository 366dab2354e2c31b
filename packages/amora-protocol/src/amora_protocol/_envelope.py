r"""Signed (and optionally sealed) envelopes: the bytes of every MQTT payload on an Amora topic.

The layout is specified byte for byte in the package README; in short::

    msgpack: [header: bin, body: bin, signature: bin]
    json:    {"header": b64, "body": b64, "sig": b64}
    signed:  b"amora-envelope-v1\\x00" || u16be(len(topic)) || topic
             || u32be(len(header)) || header || u32be(len(body)) || body

The header and body are encoded with the same codec as the outer layer. A sealed body is the
HPKE (X25519, HKDF-SHA256, ChaCha20-Poly1305, base mode) ciphertext ``enc || ct`` of the
encoded message, with ``info = b"amora-seal-v1\\x00" || u16be(len(topic)) || topic ||
u32be(len(header)) || header``; the signature covers the ciphertext (encrypt-then-sign).
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import re
import struct
from typing import TYPE_CHECKING, Annotated, Final

import msgspec
from cryptography.hazmat.primitives import hpke

from amora_protocol._errors import (
    BadSignature,
    DecryptionError,
    Expired,
    ProtocolError,
    SchemaError,
    TooLarge,
    TopicMismatch,
    Unauthorized,
    UnknownKey,
    UnsupportedAction,
)
from amora_protocol._grants import KeyRing, check_grant, open_grant
from amora_protocol._keys import EncryptionKey, EncryptionPublicKey, SigningKey, VerifyKey
from amora_protocol._messages import (
    ACTIONS,
    IDENTIFIER_PATTERN,
    Command,
    CommandResponse,
    ConnectionStatus,
    DeviceState,
    Grant,
    Message,
    MessageType,
    Right,
)
from amora_protocol._topics import TopicKind, parse_topic

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "DEFAULT_MAX_SIZE",
    "ENVELOPE_DOMAIN",
    "PROTOCOL_VERSION",
    "SEAL_DOMAIN",
    "Codec",
    "Envelope",
    "Header",
    "Sender",
    "Verified",
    "VerifiedCommand",
    "encode_envelope",
    "parse_envelope",
    "seal_info",
    "signed_bytes",
    "unauthenticated_id",
    "verify_command",
    "verify_envelope",
]

PROTOCOL_VERSION: Final = 1
DEFAULT_MAX_SIZE: Final = 64 * 1024
ENVELOPE_DOMAIN: Final = b"amora-envelope-v1\x00"
SEAL_DOMAIN: Final = b"amora-seal-v1\x00"
SIGNATURE_SIZE: Final = 64
_U63_MAX: Final = 2**63 - 1  # msgspec bounds are int64; epochs and seqs are 63-bit

_IDENTIFIER: Final = re.compile(IDENTIFIER_PATTERN)
_SUITE: Final = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305)


class Codec(enum.StrEnum):
    """The two encodings, named by the MQTT 5 content type that announces them."""

    MSGPACK = "application/vnd.amora.v1+msgpack"
    JSON = "application/vnd.amora.v1+json"

    @classmethod
    def from_content_type(cls, content_type: str | None) -> Codec:
        """Pick the codec for a content type; no content type means msgpack.

        Raises:
            SchemaError: An unknown content type.
        """
        if content_type is None or content_type == cls.MSGPACK.value:
            return cls.MSGPACK
        if content_type == cls.JSON.value:
            return cls.JSON
        raise SchemaError(f"unsupported content type {content_type!r}")


class Header(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """What an envelope says about its body; signed together with it.

    Fields are encoded in this order, defaults (``None``) left out.
    """

    v: int
    type: MessageType
    sender: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    kid: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    epoch: Annotated[int, msgspec.Meta(ge=0, le=_U63_MAX)]
    seq: Annotated[int, msgspec.Meta(ge=0, le=_U63_MAX)]
    ts_ms: Annotated[int, msgspec.Meta(ge=0)]
    exp_ms: Annotated[int, msgspec.Meta(ge=0)] | None = None
    grant: bytes | None = None
    sealed_to: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] | None = None


class _JsonEnvelope(msgspec.Struct, frozen=True, gc=False):
    header: bytes
    body: bytes
    sig: bytes


_KIND_TYPE: Final = {
    TopicKind.STATE: MessageType.STATE,
    TopicKind.COMMANDS: MessageType.COMMAND,
    TopicKind.RESPONSES: MessageType.RESPONSE,
    TopicKind.CONNECTION: MessageType.CONNECTION,
}
_TYPE_CLASS: Final[dict[MessageType, type[Message]]] = {
    MessageType.STATE: DeviceState,
    MessageType.COMMAND: Command,
    MessageType.RESPONSE: CommandResponse,
    MessageType.CONNECTION: ConnectionStatus,
}
_CLASS_TYPE: Final = {cls: kind for kind, cls in _TYPE_CLASS.items()}

_MP_ENCODER: Final = msgspec.msgpack.Encoder()
_JSON_ENCODER: Final = msgspec.json.Encoder()
_MP_OUTER: Final = msgspec.msgpack.Decoder(tuple[bytes, bytes, bytes])
_JSON_OUTER: Final = msgspec.json.Decoder(_JsonEnvelope)
_HEADER_DECODERS: Final[dict[Codec, Callable[[bytes], Header]]] = {
    Codec.MSGPACK: msgspec.msgpack.Decoder(Header).decode,
    Codec.JSON: msgspec.json.Decoder(Header).decode,
}
_BODY_DECODERS: Final[dict[tuple[Codec, MessageType], Callable[[bytes], Message]]] = {
    **{(Codec.MSGPACK, t): msgspec.msgpack.Decoder(c).decode for t, c in _TYPE_CLASS.items()},
    **{(Codec.JSON, t): msgspec.json.Decoder(c).decode for t, c in _TYPE_CLASS.items()},
}


def _encode(codec: Codec, value: object) -> bytes:
    return _MP_ENCODER.encode(value) if codec is Codec.MSGPACK else _JSON_ENCODER.encode(value)


def _frame(domain: bytes, topic: bytes, header: bytes) -> list[bytes]:
    return [domain, struct.pack(">H", len(topic)), topic, struct.pack(">I", len(header)), header]


def signed_bytes(topic: str, header: bytes, body: bytes) -> bytes:
    """Return the exact bytes an envelope's Ed25519 signature covers."""
    parts = _frame(ENVELOPE_DOMAIN, topic.encode(), header)
    parts += [struct.pack(">I", len(body)), body]
    return b"".join(parts)


def seal_info(topic: str, header: bytes) -> bytes:
    """Return the HPKE ``info`` that binds a sealed body to its topic and header."""
    return b"".join(_frame(SEAL_DOMAIN, topic.encode(), header))


@dataclasses.dataclass(frozen=True, slots=True)
class Envelope:
    """A parsed envelope whose signature has not been checked yet."""

    header: Header
    header_bytes: bytes
    body: bytes
    signature: bytes
    codec: Codec


@dataclasses.dataclass(frozen=True, slots=True)
class Verified:
    """A verified envelope's header and decoded message."""

    header: Header
    message: Message


@dataclasses.dataclass(frozen=True, slots=True)
class VerifiedCommand:
    """A verified command, with the grant that authorised its sender."""

    header: Header
    command: Command
    grant: Grant


def encode_envelope(  # noqa: PLR0913 - every header field is the caller's to choose
    topic: str,
    message: Message,
    *,
    signing_key: SigningKey,
    sender: str,
    epoch: int,
    seq: int,
    now_ms: int,
    expires_at_ms: int | None = None,
    grant: bytes | None = None,
    codec: Codec = Codec.MSGPACK,
    seal_to: EncryptionPublicKey | None = None,
) -> bytes:
    """Encode, optionally seal, and sign ``message`` for ``topic``.

    Most callers use `Sender`, which keeps ``epoch`` and ``seq``.

    Raises:
        TopicMismatch: ``message`` does not belong on ``topic``.
    """
    kind = parse_topic(topic).kind
    msg_type = _CLASS_TYPE[type(message)]
    if _KIND_TYPE[kind] is not msg_type:
        raise TopicMismatch(f"a {msg_type.value} message does not belong on {topic!r}")
    header = Header(
        v=PROTOCOL_VERSION,
        type=msg_type,
        sender=sender,
        kid=signing_key.kid,
        epoch=epoch,
        seq=seq,
        ts_ms=now_ms,
        exp_ms=expires_at_ms,
        grant=grant,
        sealed_to=seal_to.kid if seal_to is not None else None,
    )
    header_bytes = _encode(codec, header)
    body = _encode(codec, message)
    if seal_to is not None:
        body = _SUITE.encrypt(body, seal_to.key, info=seal_info(topic, header_bytes))
    signature = signing_key.sign(signed_bytes(topic, header_bytes, body))
    if codec is Codec.MSGPACK:
        return _MP_ENCODER.encode((header_bytes, body, signature))
    return _JSON_ENCODER.encode(_JsonEnvelope(header_bytes, body, signature))


class Sender:
    """Signs outgoing messages for one sender, keeping its epoch and sequence number.

    Args:
        sender_id: The device id, or the session id of an app.
        signing_key: The sender's Ed25519 key.
        epoch: A random 63-bit value chosen once per process start (the caller draws it).
        first_seq: The first sequence number to use.
    """

    __slots__ = ("_key", "_seq", "epoch", "sender_id")

    def __init__(self, sender_id: str, signing_key: SigningKey, *, epoch: int, first_seq: int = 0) -> None:
        """Create a sender."""
        if not 0 <= epoch <= _U63_MAX:
            raise SchemaError("epoch must be in [0, 2**63)")
        self.sender_id = sender_id
        self.epoch = epoch
        self._key = signing_key
        self._seq = first_seq

    @property
    def signing_key(self) -> SigningKey:
        """The key this sender signs with."""
        return self._key

    def encode(  # noqa: PLR0913 - header fields are keyword-only options
        self,
        topic: str,
        message: Message,
        *,
        now_ms: int,
        expires_at_ms: int | None = None,
        grant: bytes | None = None,
        codec: Codec = Codec.MSGPACK,
        seal_to: EncryptionPublicKey | None = None,
    ) -> bytes:
        """Return the envelope bytes for ``message`` on ``topic`` with the next sequence number.

        A `Command` gets its own ``expires_at_ms`` as the envelope expiry unless one is given.

        Raises:
            TopicMismatch: ``message`` does not belong on ``topic``.
        """
        if expires_at_ms is None and isinstance(message, Command):
            expires_at_ms = message.expires_at_ms
        seq = self._seq
        self._seq += 1
        return encode_envelope(
            topic,
            message,
            signing_key=self._key,
            sender=self.sender_id,
            epoch=self.epoch,
            seq=seq,
            now_ms=now_ms,
            expires_at_ms=expires_at_ms,
            grant=grant,
            codec=codec,
            seal_to=seal_to,
        )


def parse_envelope(payload: bytes, *, content_type: str | None = None, max_size: int = DEFAULT_MAX_SIZE) -> Envelope:
    """Split an envelope into header, body and signature without verifying anything.

    Raises:
        TooLarge: ``payload`` exceeds ``max_size`` (checked before parsing).
        SchemaError: Malformed bytes or an unknown content type.
    """
    if len(payload) > max_size:
        raise TooLarge(len(payload), max_size)
    codec = Codec.from_content_type(content_type)
    try:
        if codec is Codec.MSGPACK:
            header_bytes, body, signature = _MP_OUTER.decode(payload)
        else:
            outer = _JSON_OUTER.decode(payload)
            header_bytes, body, signature = outer.header, outer.body, outer.sig
        header = _HEADER_DECODERS[codec](header_bytes)
    except (
        msgspec.DecodeError,
        UnicodeDecodeError,
    ) as exc:  # msgspec raises the latter for bad UTF-8
        raise SchemaError(f"malformed envelope: {exc}") from exc
    if len(signature) != SIGNATURE_SIZE:
        raise SchemaError(f"signature must be {SIGNATURE_SIZE} bytes, not {len(signature)}")
    if header.v != PROTOCOL_VERSION:
        raise SchemaError(f"unsupported protocol version {header.v}")
    return Envelope(header, header_bytes, body, signature, codec)


_ACTION_TAGS: Final = frozenset(str(a.__struct_config__.tag) for a in ACTIONS)


def _unknown_action(codec: Codec, body: bytes) -> str | None:
    """The action tag of a command body that failed to decode, if it is one this version lacks.

    Only on the failure path: a loose decode tells "a newer sender's action" from "garbage".
    """
    try:
        loose = msgspec.msgpack.decode(body) if codec is Codec.MSGPACK else msgspec.json.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return None
    action = loose.get("action") if isinstance(loose, dict) else None
    tag = action.get("type") if isinstance(action, dict) else None
    return tag if isinstance(tag, str) and tag not in _ACTION_TAGS else None


def _loose_command_id(codec: Codec, body: bytes) -> str | None:
    """The ``id`` of a command body that failed its schema, when it is a valid identifier."""
    try:
        loose = msgspec.msgpack.decode(body) if codec is Codec.MSGPACK else msgspec.json.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return None
    command_id = loose.get("id") if isinstance(loose, dict) else None
    if isinstance(command_id, str) and _IDENTIFIER.fullmatch(command_id) is not None:
        return command_id
    return None


def _open_body(env: Envelope, topic: str, decrypt_key: EncryptionKey | None) -> Message:
    body = env.body
    sealed_to = env.header.sealed_to
    if sealed_to is not None:
        if decrypt_key is None:
            raise DecryptionError(f"the body is sealed to key {sealed_to!r} and no decryption key was given")
        if decrypt_key.kid != sealed_to:
            raise UnknownKey(sealed_to, "encryption key")
        try:
            body = _SUITE.decrypt(body, decrypt_key.key, info=seal_info(topic, env.header_bytes))
        except Exception as exc:  # cryptography raises InvalidTag or ValueError
            raise DecryptionError("the sealed body does not open with this key") from exc
    try:
        return _BODY_DECODERS[env.codec, env.header.type](body)
    except msgspec.ValidationError as exc:
        error: SchemaError = SchemaError(f"invalid {env.header.type.value}: {exc}")
        if env.header.type is MessageType.COMMAND:
            if (action := _unknown_action(env.codec, body)) is not None:
                error = UnsupportedAction(action)
            # Commands are only opened once their signature verified (`verify_command`): an
            # id readable in the signed body is the authenticated sender's, safe to answer by.
            error.command_id = _loose_command_id(env.codec, body)
        raise error from exc
    except (
        msgspec.DecodeError,
        UnicodeDecodeError,
    ) as exc:  # msgspec raises the latter for bad UTF-8
        raise SchemaError(f"malformed {env.header.type.value} body: {exc}") from exc


def _check_and_open(
    env: Envelope,
    topic: str,
    key: VerifyKey,
    now_ms: int,
    decrypt_key: EncryptionKey | None,
) -> tuple[str, Message]:
    device_id, kind = parse_topic(topic)
    if _KIND_TYPE[kind] is not env.header.type:
        raise TopicMismatch(f"a {env.header.type.value} envelope does not belong on {topic!r}")
    if not key.verify(env.signature, signed_bytes(topic, env.header_bytes, env.body)):
        raise BadSignature(f"envelope signature does not verify for {topic!r}")
    exp = env.header.exp_ms
    if exp is not None and now_ms >= exp:
        raise Expired("envelope", exp, now_ms)
    return device_id, _open_body(env, topic, decrypt_key)


def verify_envelope(  # noqa: PLR0913
    payload: bytes,
    *,
    topic: str,
    content_type: str | None,
    key: VerifyKey | KeyRing,
    now_ms: int,
    decrypt_key: EncryptionKey | None = None,
    max_size: int = DEFAULT_MAX_SIZE,
) -> Verified:
    """Verify a device's envelope (state, response or connection status) and decode it.

    Args:
        payload: The MQTT payload.
        topic: The topic it arrived on (bound into the signature).
        content_type: The MQTT content type (``None`` means msgpack).
        key: The device's key, or that one device's keys by key id (e.g. old and new during a
            rotation). Never a ring of several devices' keys: the key id alone would then let one
            device's key vouch for a message on another device's topic.
        now_ms: The verification time (ms since the Unix epoch).
        decrypt_key: The recipient's key, for sealed bodies.
        max_size: Payloads larger than this are refused before parsing.

    Raises:
        TooLarge, SchemaError, TopicMismatch, UnknownKey, BadSignature, Expired, DecryptionError:
            as their names say; all are `ProtocolError`.
    """
    env = parse_envelope(payload, content_type=content_type, max_size=max_size)
    if isinstance(key, VerifyKey):
        if key.kid != env.header.kid:
            raise UnknownKey(env.header.kid)
        verify_key = key
    else:
        found = key.get(env.header.kid)
        if found is None:
            raise UnknownKey(env.header.kid)
        verify_key = found
    if env.header.type is MessageType.COMMAND:
        raise TopicMismatch("commands are verified with verify_command (they carry a grant)")
    device_id, message = _check_and_open(env, topic, verify_key, now_ms, decrypt_key)
    # Device messages name their device; it must be the topic's, and the device must be the sender.
    if message.device_id != device_id or env.header.sender != device_id:  # type: ignore[union-attr]
        raise TopicMismatch(f"a message from/about {message.device_id!r} on {topic!r}")  # type: ignore[union-attr]
    return Verified(env.header, message)


def verify_command(  # noqa: PLR0913
    payload: bytes,
    *,
    topic: str,
    content_type: str | None,
    trusted_keys: KeyRing,
    now_ms: int,
    decrypt_key: EncryptionKey | None = None,
    max_size: int = DEFAULT_MAX_SIZE,
) -> VerifiedCommand:
    """Verify a command envelope and the grant it carries, and decode the command.

    The grant must be signed by one of ``trusted_keys`` (the authz service's) and the envelope
    with the grant's session key (authentication); then the envelope and the grant must be
    unexpired, the grant must list the topic's device and carry `Right.CONTROL`, and its
    session must be the envelope's sender (authorisation). Errors from the second stage carry
    the authenticated command's id in `ProtocolError.command_id`.
    Replay and duplicate checks are `CommandGuard`'s.

    Raises:
        Unauthorized: No grant, or a grant that does not cover this sender, device or right.
        TooLarge, SchemaError, TopicMismatch, UnknownKey, BadSignature, Expired, DecryptionError:
            as their names say; all are `ProtocolError`.
    """
    env = parse_envelope(payload, content_type=content_type, max_size=max_size)
    device_id, kind = parse_topic(topic)
    if kind is not TopicKind.COMMANDS or env.header.type is not MessageType.COMMAND:
        raise TopicMismatch(f"a {env.header.type.value} envelope does not belong on {topic!r}")
    if env.header.grant is None:
        raise Unauthorized("the command carries no grant")
    # Strategy: authenticate first (authz signed the grant, the grant's session key signed the
    # envelope), authorise after. Refusals found after authentication carry the command id,
    # so the device can answer the sender by it; earlier ones never echo a byte of the input.
    grant = open_grant(env.header.grant, trusted_keys)
    session_key = VerifyKey.from_raw(grant.signing_key)
    if session_key.kid != env.header.kid:
        raise UnknownKey(env.header.kid, "session key")
    if not session_key.verify(env.signature, signed_bytes(topic, env.header_bytes, env.body)):
        raise BadSignature(f"envelope signature does not verify for {topic!r}")
    message = _open_body(env, topic, decrypt_key)
    if not isinstance(message, Command):  # pragma: no cover - guaranteed by the body decoder
        raise SchemaError("not a command")
    try:
        exp = env.header.exp_ms
        if exp is not None and now_ms >= exp:
            raise Expired("envelope", exp, now_ms)
        check_grant(grant, now_ms=now_ms, device_id=device_id, right=Right.CONTROL)
        if grant.session_id != env.header.sender:
            raise Unauthorized(f"grant is for session {grant.session_id!r}, not sender {env.header.sender!r}")
    except ProtocolError as exc:
        exc.command_id = message.id
        raise
    return VerifiedCommand(env.header, message, grant)


def unauthenticated_id(payload: bytes) -> str:
    """The id a device answers with when it refuses a command before authenticating it.

    ``"unauthenticated:"`` and the first 16 bytes of SHA-256 of the MQTT payload, in hex:
    computed from the bytes, never copied from them, so an answer echoes nothing an
    unauthenticated sender chose; an app can still match it against its own payload.
    """
    return "unauthenticated:" + hashlib.sha256(payload).digest()[:16].hex()
