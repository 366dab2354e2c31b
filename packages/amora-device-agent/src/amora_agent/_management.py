"""The management plane (device twin, telemetry): an interface the agent offers and planes use.

Nothing here is on the real-time path: the agent keeps working whatever a plane does,
and a plane's failures are logged and reported, never raised into the agent.
"""

from __future__ import annotations

from typing import Any, Protocol

import msgspec

from amora_agent._config import BrokerEndpoint, LogLevel  # noqa: TC001 - msgspec needs them at run time

__all__ = ["DesiredSettings", "ManagementHost", "ManagementPlane", "parse_desired"]


class DesiredSettings(msgspec.Struct, frozen=True, kw_only=True):
    """What the device twin's desired properties may set (absent = unchanged).

    Unknown properties are ignored, so the twin can carry settings for newer agents.
    """

    trusted_authz_keys: tuple[str, ...] | None = None
    brokers: tuple[BrokerEndpoint, ...] | None = None
    log_level: LogLevel | None = None
    display_name: str | None = None


def parse_desired(properties: dict[str, Any]) -> DesiredSettings:
    """Read the settings out of a twin's desired properties (or a desired patch).

    Raises:
        msgspec.ValidationError: A known property has the wrong shape.
    """
    known = {k: v for k, v in properties.items() if k in DesiredSettings.__struct_fields__}
    return msgspec.convert(known, DesiredSettings)


class ManagementHost(Protocol):
    """What the agent offers a management plane."""

    def apply_desired(self, settings: DesiredSettings) -> None:
        """Apply desired settings (called on the agent's event loop)."""
        ...

    def reported(self) -> dict[str, Any]:
        """The reported properties that describe the agent now."""
        ...

    def take_usage(self) -> dict[str, int]:
        """Usage counters since the last call (plays, errors, reconnects, ...)."""
        ...

    def restore_usage(self, usage: dict[str, int]) -> None:
        """Give back counters a plane could not send, to go out with the next batch."""
        ...

    def note_error(self, error: str) -> None:
        """Record the plane's last error (it is reported once the plane works again)."""
        ...


class ManagementPlane(Protocol):
    """A device-management connection (Azure IoT Hub in production)."""

    async def run(self, host: ManagementHost) -> None:
        """Serve ``host`` until cancelled; must swallow its own failures and retry."""
        ...
