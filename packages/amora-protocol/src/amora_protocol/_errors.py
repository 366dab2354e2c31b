"""The protocol's error hierarchy: one root, one subclass per thing a caller can act on."""

from __future__ import annotations

__all__ = [
    "BadSignature",
    "ClockSkew",
    "DecryptionError",
    "Expired",
    "InvalidDeviceId",
    "ProtocolError",
    "Replayed",
    "SchemaError",
    "TooLarge",
    "TopicError",
    "TopicMismatch",
    "Unauthorized",
    "UnknownKey",
    "UnsupportedAction",
]


class ProtocolError(Exception):
    """Root of every error raised by `amora_protocol`.

    Attributes:
        command_id: Set by `verify_command` when the error was found *after* the envelope's
            signature verified with the session key of an authz-signed grant: the id of that
            authenticated command, safe to answer with. ``None`` otherwise (the bytes are
            unauthenticated and their id must not be echoed).
    """

    command_id: str | None = None


class SchemaError(ProtocolError, ValueError):
    """Bytes or values that do not fit the message schema (wrong type, missing field, range)."""


class UnsupportedAction(SchemaError):  # noqa: N818 - the name says what is wrong
    """A command whose action this version does not know: a newer sender (answer ``unsupported``).

    New actions are a compatible change (see the README, "Compatibility and versions"): a
    device that cannot decode one tells the sender so instead of calling the command invalid.

    Attributes:
        action: The action's ``type`` tag as sent.
    """

    def __init__(self, action: str) -> None:
        """Build the error for the unknown tag ``action``."""
        self.action = action
        super().__init__(f"unknown action {action!r}: this device's protocol version does not support it")


class InvalidDeviceId(SchemaError):  # noqa: N818 - the name says what is wrong
    """A device id outside ``[A-Za-z0-9][A-Za-z0-9_-]{0,63}``.

    Attributes:
        device_id: The offending value, as given.
    """

    def __init__(self, device_id: object) -> None:
        """Build the error for ``device_id``."""
        self.device_id = device_id
        super().__init__(
            f"invalid device id {device_id!r}: expected 1-64 characters of [A-Za-z0-9_-], "
            "starting with a letter or digit"
        )


class TopicError(SchemaError):
    """A topic string that is not one of Amora's device topics.

    Attributes:
        topic: The offending topic.
    """

    def __init__(self, topic: str, why: str) -> None:
        """Build the error for ``topic``."""
        self.topic = topic
        super().__init__(f"not an Amora device topic: {topic!r} ({why})")


class TooLarge(ProtocolError):  # noqa: N818
    """A payload over the size limit; refused before any parsing.

    Attributes:
        size: The payload size in bytes.
        limit: The limit in force.
    """

    def __init__(self, size: int, limit: int) -> None:
        """Build the error."""
        self.size = size
        self.limit = limit
        super().__init__(f"payload of {size} bytes exceeds the limit of {limit} bytes")


class BadSignature(ProtocolError):  # noqa: N818
    """The signature does not verify for this topic, header, body and key."""


class UnknownKey(ProtocolError):  # noqa: N818
    """The envelope names a key id the verifier does not trust.

    Attributes:
        kid: The key id from the envelope.
    """

    def __init__(self, kid: str, what: str = "signing key") -> None:
        """Build the error for key id ``kid``."""
        self.kid = kid
        super().__init__(f"unknown {what} id {kid!r}")


class TopicMismatch(ProtocolError):  # noqa: N818
    """A message that does not belong on the topic it arrived on (type or device differs)."""


class Expired(ProtocolError):  # noqa: N818
    """A message, command or grant past its expiry.

    Attributes:
        expired_at_ms: When it expired (ms since the Unix epoch).
        now_ms: The verification time used.
    """

    def __init__(self, what: str, expired_at_ms: int, now_ms: int) -> None:
        """Build the error."""
        self.expired_at_ms = expired_at_ms
        self.now_ms = now_ms
        super().__init__(f"{what} expired at {expired_at_ms} (now {now_ms})")


class ClockSkew(ProtocolError):  # noqa: N818
    """Clocks further apart than the allowed skew (a timestamp too far in the future).

    Attributes:
        offset_ms: The verifier's clock minus the sender's, as measured (``now - ts_ms``);
            negative when the message is dated in the verifier's future. ``None`` if unknown.
    """

    def __init__(self, message: str, *, offset_ms: int | None = None) -> None:
        """Build the error."""
        self.offset_ms = offset_ms
        super().__init__(message)


class Replayed(ProtocolError):  # noqa: N818
    """A command id or (sender, epoch, seq) that was already seen, or too old to tell."""


class Unauthorized(ProtocolError):  # noqa: N818
    """A command whose grant is missing, untrusted, or does not cover this device or right."""


class DecryptionError(ProtocolError):
    """A sealed body that cannot be opened with the given key."""
