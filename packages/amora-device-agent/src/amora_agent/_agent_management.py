"""The agent's side of the management plane (IoT Hub): desired settings in, errors and usage out.

Kept apart from the agent module, which holds the lifecycle, the state and the broker link;
`Agent.reported` stays there with the rest of what the agent knows about itself.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from amora_agent._config import parse_verify_key
from amora_agent._errors import ConfigError

if TYPE_CHECKING:
    from collections import Counter
    from collections.abc import Iterable, Sequence

    import structlog

    from amora_agent._config import BrokerEndpoint
    from amora_agent._management import DesiredSettings, ManagementPlane
    from amora_protocol import VerifyKey

__all__ = ["ManagementHandling"]


class ManagementHandling:
    """Running the management plane and applying what it asks for."""

    # Provided by the agent (see `Agent.__init__`).
    last_error: str | None
    display_name: str | None
    _management: ManagementPlane | None
    _usage: Counter[str]
    _log: structlog.typing.FilteringBoundLogger

    def set_trusted_keys(self, keys: Iterable[VerifyKey]) -> None:
        """Replace the trusted authz keys (the agent's)."""
        raise NotImplementedError

    def set_endpoints(self, endpoints: Sequence[BrokerEndpoint]) -> None:
        """Replace the broker list (the agent's)."""
        raise NotImplementedError

    def reported(self) -> dict[str, Any]:
        """Reported properties for the device twin (the agent's)."""
        raise NotImplementedError

    async def _run_management(self) -> None:
        assert self._management is not None  # noqa: S101 - only started when set
        try:
            await self._management.run(self)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the management plane must never end the agent
            self.note_error(f"management: {exc!r}")

    def apply_desired(self, settings: DesiredSettings) -> None:
        """Apply the device twin's desired settings; a bad value is reported, not applied."""
        try:
            if settings.trusted_authz_keys is not None:
                keys = [parse_verify_key(k) for k in settings.trusted_authz_keys]
                if keys:
                    self.set_trusted_keys(keys)
            if settings.brokers:
                self.set_endpoints(settings.brokers)
        except ConfigError as exc:
            self.note_error(f"desired properties: {exc}")
        if settings.log_level is not None:
            logging.getLogger().setLevel(settings.log_level.value.upper())
            self._log.info("log level set", level=settings.log_level.value)
        if settings.display_name is not None:
            self.display_name = settings.display_name

    def take_usage(self) -> dict[str, int]:
        """Usage counters since the last call."""
        usage = dict(self._usage)
        self._usage.clear()
        return usage

    def restore_usage(self, usage: dict[str, int]) -> None:
        """Put back counters that could not be sent."""
        self._usage.update(usage)

    def note_error(self, error: str) -> None:
        """Remember the last error, for the reported properties."""
        self.last_error = error[:1024]
        self._log.warning("error noted", error=self.last_error)
