"""The harness's exceptions: one root, subclasses that carry what went wrong."""

from __future__ import annotations

__all__ = [
    "DevtoolsError",
    "DynsecError",
    "MqttError",
    "MqttRefused",
    "PkiError",
    "ServiceStartError",
]


class DevtoolsError(Exception):
    """Root of every error raised by `amora_devtools`."""


class ServiceStartError(DevtoolsError):
    """A service (mosquitto, mpd, postgres) did not start or did not become ready.

    Attributes:
        service: Which service (``"mosquitto"``, ``"mpd"``, ``"postgres"``).
        log_tail: The last lines the service logged, to see why.
    """

    def __init__(self, service: str, message: str, *, log_tail: str = "") -> None:
        """Build the error; ``log_tail`` is appended to the message when present."""
        self.service = service
        self.log_tail = log_tail
        text = f"{service}: {message}"
        if log_tail:
            text += f"\n--- last log lines ---\n{log_tail}"
        super().__init__(text)


class DynsecError(DevtoolsError):
    """A dynamic-security command failed, or got no answer in time.

    Attributes:
        failures: ``(command, error)`` pairs for each command the broker refused.
    """

    def __init__(self, message: str, *, failures: tuple[tuple[str, str], ...] = ()) -> None:
        """Build the error from a summary and the failed commands."""
        self.failures = failures
        if failures:
            message += ": " + "; ".join(f"{cmd}: {err}" for cmd, err in failures)
        super().__init__(message)


class MqttError(DevtoolsError):
    """The harness's small MQTT client could not talk to the broker (transport or protocol)."""


class MqttRefused(MqttError):  # noqa: N818 - reads as what happened: the broker refused
    """The broker answered CONNECT with a failure reason code.

    Attributes:
        reason_code: The MQTT 5 CONNACK reason code (e.g. 0x86 bad credentials, 0x87 not authorised).
    """

    def __init__(self, reason_code: int) -> None:
        """Build the error from the CONNACK reason code."""
        self.reason_code = reason_code
        super().__init__(f"CONNECT refused with reason code 0x{reason_code:02x}")


class PkiError(DevtoolsError):
    """The development PKI's files are missing or unusable, or a CSR is invalid."""
