"""The SDK's one error hierarchy.

Every public call raises an `AmoraSyncError` subclass: gmqtt, httpx, msgspec
and cryptography exceptions are translated where they are caught and chained
with ``from`` so that the cause stays visible in tracebacks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from amora_protocol import CommandResponse


class AmoraSyncError(Exception):
    """Root of every error raised by `amora_sync`."""


class ClientClosedError(AmoraSyncError):
    """The client is not open (never entered, or already left its ``async with``)."""


class InvalidDeviceIdError(AmoraSyncError, ValueError):
    """A device id is not well formed (see the protocol's device id rules).

    Attributes:
        device_id: The rejected value.
    """

    def __init__(self, device_id: str, message: str) -> None:
        """Build the error for `device_id`."""
        super().__init__(message)
        self.device_id = device_id


class InvalidCommandError(AmoraSyncError, ValueError):
    """A command does not satisfy the schema (e.g. a volume of 400); nothing was sent."""


class UnknownDeviceError(AmoraSyncError, LookupError):
    """The device is not one of the session's devices (the user may not use it).

    Attributes:
        device_id: The device that was asked for.
    """

    def __init__(self, device_id: str) -> None:
        """Build the error for `device_id`."""
        super().__init__(f"device {device_id!r} is not in this session")
        self.device_id = device_id


class SessionError(AmoraSyncError):
    """The authz service did not give (or refresh) a session.

    Attributes:
        status_code: The HTTP status, or None when no answer arrived.
        code: The service's stable error code, when it sent one.
    """

    def __init__(self, message: str, *, status_code: int | None = None, code: str | None = None) -> None:
        """Build the error."""
        super().__init__(message)
        self.status_code = status_code
        self.code = code


class AuthenticationError(SessionError):
    """The user's token was refused (HTTP 401/403): a new token is needed."""


class AuthzUnavailableError(SessionError):
    """The authz service could not be reached or failed (network error, 5xx)."""


class ConnectError(AmoraSyncError):
    """No broker endpoint accepted a connection before the deadline.

    Attributes:
        attempts: How many connection attempts were made.
        last_error: A description of the last failure.
    """

    def __init__(self, message: str, *, attempts: int, last_error: str | None) -> None:
        """Build the error."""
        super().__init__(message)
        self.attempts = attempts
        self.last_error = last_error


class CommandError(AmoraSyncError):
    """A command did not succeed.

    Attributes:
        device_id: The device the command was for.
        command_id: The command's id.
    """

    def __init__(self, message: str, *, device_id: str, command_id: str) -> None:
        """Build the error."""
        super().__init__(message)
        self.device_id = device_id
        self.command_id = command_id


class OutboxFullError(CommandError):
    """The outbox holds its maximum of pending commands; nothing was queued (push back)."""


class CommandExpiredError(CommandError):
    """The deadline passed while the command waited in the outbox: it was never sent."""


class CommandTimeoutError(CommandError):
    """The command was sent but no final response arrived before its deadline.

    Attributes:
        last_response: An intermediate response (``accepted``) if one arrived.
    """

    def __init__(
        self,
        message: str,
        *,
        device_id: str,
        command_id: str,
        last_response: CommandResponse | None = None,
    ) -> None:
        """Build the error."""
        super().__init__(message, device_id=device_id, command_id=command_id)
        self.last_response = last_response


class CommandRejectedError(CommandError):
    """The device answered ``rejected`` or ``failed``.

    Attributes:
        response: The device's verified response.
        status: Its status value (``"rejected"`` or ``"failed"``).
        reason: Its reason code value, if any (``"expired"``, ``"version-mismatch"``, ...).
    """

    def __init__(self, response: CommandResponse, *, device_id: str, command_id: str) -> None:
        """Build the error from the device's response."""
        status = _value(response.status)
        reason = None if response.reason is None else _value(response.reason)
        detail = f" ({reason})" if reason else ""
        super().__init__(
            f"device {device_id!r} answered {status}{detail} to command {command_id}",
            device_id=device_id,
            command_id=command_id,
        )
        self.response = response
        self.status = status
        self.reason = reason


def _value(item: object) -> str:
    value = getattr(item, "value", item)
    return str(value)
