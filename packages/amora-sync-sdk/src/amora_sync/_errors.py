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


class RateLimitedError(AuthzUnavailableError):
    """The authz service is limiting session requests (HTTP 429) for longer than the client waits.

    The client waits as the service's ``Retry-After`` says, up to ``rate_limit_wait``
    seconds in all for one request; this is raised when that is not enough.

    Attributes:
        retry_after: Seconds the service asked to wait (its last ``Retry-After``), or None
            when it did not say.
    """

    def __init__(self, message: str, *, retry_after: float | None, code: str | None = None) -> None:
        """Build the error."""
        super().__init__(message, status_code=429, code=code)
        self.retry_after = retry_after


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

    When the answer repeats the outcome of an earlier copy of the same command (the SDK
    resent it after a link change), ``response.duplicate`` is true: the command ran (or
    was refused) once, as the answer says.

    Attributes:
        response: The device's verified response.
        status: Its status value (``"rejected"`` or ``"failed"``).
        reason: Its reason code value, if any (``"expired"``, ``"version-mismatch"``, ...).
    """

    def __init__(
        self, response: CommandResponse, *, device_id: str, command_id: str, detail: str | None = None
    ) -> None:
        """Build the error from the device's response (`detail` replaces the reason in the message)."""
        status = _value(response.status)
        reason = None if response.reason is None else _value(response.reason)
        said = detail or reason
        super().__init__(
            f"device {device_id!r} answered {status}{f' ({said})' if said else ''} to command {command_id}",
            device_id=device_id,
            command_id=command_id,
        )
        self.response = response
        self.status = status
        self.reason = reason


class DeviceBusyError(CommandRejectedError):
    """The device could not take the command now (reason ``busy``); it did not run.

    Sending it again later may succeed; the device says when.

    Attributes:
        retry_after: Seconds the device asked to wait before sending again, if it said.
    """

    def __init__(self, response: CommandResponse, *, device_id: str, command_id: str) -> None:
        """Build the error from the device's ``busy`` answer."""
        after = None if response.retry_after_ms is None else response.retry_after_ms / 1000
        hint = "busy" if after is None else f"busy, try again in {after:g} s"
        super().__init__(response, device_id=device_id, command_id=command_id, detail=hint)
        self.retry_after = after


class ClockSkewError(CommandRejectedError):
    """The device refused the command because its clock and this app's differ too much.

    The device measures the offset (its clock minus this app's); the SDK compares this
    app's clock with the authz service's (its HTTP ``Date``) to tell whose clock is off.

    Attributes:
        offset_ms: The device's clock minus this app's, as the device measured it (transit
            included), or None if it did not say.
        app_offset_ms: The authz service's clock minus this app's, as last measured (to
            about a second), or None when unknown.
        culprit: ``"device"``, ``"app"``, ``"both"`` or ``"unknown"``: whose clock is off.
    """

    def __init__(
        self, response: CommandResponse, *, device_id: str, command_id: str, app_offset_ms: int | None
    ) -> None:
        """Build the error from the device's ``clock-skew`` answer."""
        offset = response.clock_offset_ms
        culprit, text = _whose_clock(offset, app_offset_ms)
        super().__init__(response, device_id=device_id, command_id=command_id, detail=f"clock-skew: {text}")
        self.offset_ms = offset
        self.app_offset_ms = app_offset_ms
        self.culprit = culprit


# Within this the authz service's HTTP Date (whole seconds) and a clock count as agreeing.
_CLOCKS_AGREE_MS = 2_000


def _whose_clock(offset_ms: int | None, app_offset_ms: int | None) -> tuple[str, str]:
    """Say whose clock is off, from device-app and authz-app offsets (ms)."""
    if offset_ms is None:
        return "unknown", "the device did not say by how much its clock differs"
    seconds = abs(offset_ms) / 1000
    relation = f"the device's clock is {seconds:.1f} s {'ahead of' if offset_ms > 0 else 'behind'} this app's"
    if app_offset_ms is None:
        return "unknown", f"{relation}; no time from the authz service to tell which clock is off"
    device_vs_authz = offset_ms - app_offset_ms
    app_ok = abs(app_offset_ms) <= _CLOCKS_AGREE_MS
    device_ok = abs(device_vs_authz) <= _CLOCKS_AGREE_MS
    if app_ok:
        return "device", f"{relation}; this app agrees with the authz service, so the device's clock is off"
    app_side = f"{abs(app_offset_ms) / 1000:.1f} s {'behind' if app_offset_ms > 0 else 'ahead of'}"
    if device_ok:
        return (
            "app",
            f"{relation}; the device agrees with the authz service, so this app's clock is off ({app_side} it)",
        )
    return "both", (
        f"{relation}; neither agrees with the authz service (this app is {app_side} it, "
        f"the device {abs(device_vs_authz) / 1000:.1f} s {'ahead of' if device_vs_authz > 0 else 'behind'} it)"
    )


def _value(item: object) -> str:
    value = getattr(item, "value", item)
    return str(value)
