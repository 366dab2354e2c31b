"""Azure IoT Hub as the management plane, through azure-iot-device (MQTT, port 8883).

The library runs its own threads and calls handlers on them, so desired-property
patches are handed to the agent's loop with ``call_soon_threadsafe``. Every call into
the library is bounded by a timeout, and any failure ends the session and starts a new
one after a backoff: the real-time path never waits on IoT Hub.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any, Final

import msgspec
import structlog
from azure.iot.device import Message
from azure.iot.device.aio import IoTHubDeviceClient

from amora_agent._management import ManagementHost, parse_desired
from amora_protocol import Backoff

__all__ = ["IoTHubPlane"]

_CALL_TIMEOUT_S: Final = 30.0


class IoTHubPlane:
    """Device twin (desired in, reported out) and batched usage telemetry over IoT Hub.

    Args:
        connection_string: The device's IoT Hub connection string (SAS key).
        server_ca: PEM of the CA that signs the hub's certificate (tests, private hubs);
            ``None`` uses the library's bundled roots.
        telemetry_interval_s: How often usage counters go out (one message per batch).
        report_interval_s: How often reported properties are compared and patched.
        call_timeout_s: Bound on each call into the library.
        backoff: Delays between sessions after a failure.
        logger: A structlog logger.
    """

    def __init__(  # noqa: PLR0913 - all keyword-only knobs
        self,
        connection_string: str,
        *,
        server_ca: str | None = None,
        telemetry_interval_s: float = 300.0,
        report_interval_s: float = 5.0,
        call_timeout_s: float = _CALL_TIMEOUT_S,
        backoff: Backoff | None = None,
        logger: structlog.typing.FilteringBoundLogger | None = None,
    ) -> None:
        """Configure; nothing connects before `run`."""
        self._connection_string = connection_string
        self._server_ca = server_ca
        self._telemetry_interval_s = telemetry_interval_s
        self._report_interval_s = report_interval_s
        self._timeout = call_timeout_s
        self._backoff = backoff or Backoff(initial=5.0, maximum=300.0)
        self._log = logger if logger is not None else structlog.get_logger("amora_agent.iothub")
        self.sessions = 0

    async def run(self, host: ManagementHost) -> None:
        """Serve ``host`` until cancelled, reconnecting after any failure."""
        while True:
            try:
                await self._session(host)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the library raises many types; none may escape
                error = f"iothub: {exc!r}"
                self._log.warning("iothub session ended", error=error)
                host.note_error(error)
            await asyncio.sleep(self._backoff.next_delay())

    async def _session(self, host: ManagementHost) -> None:
        loop = asyncio.get_running_loop()
        kwargs: dict[str, Any] = {"keep_alive": 60, "connection_retry": False}
        if self._server_ca is not None:
            kwargs["server_verification_cert"] = self._server_ca
        client = IoTHubDeviceClient.create_from_connection_string(self._connection_string, **kwargs)

        def on_patch(patch: dict[str, Any]) -> None:
            # Called on the library's handler thread.
            try:
                settings = parse_desired(patch)
            except msgspec.ValidationError as exc:
                loop.call_soon_threadsafe(host.note_error, f"desired properties: {exc}")
                return
            loop.call_soon_threadsafe(host.apply_desired, settings)

        client.on_twin_desired_properties_patch_received = on_patch
        try:
            await asyncio.wait_for(client.connect(), self._timeout)
            self.sessions += 1
            twin = await asyncio.wait_for(client.get_twin(), self._timeout)
            host.apply_desired(parse_desired(twin.get("desired", {})))
            self._backoff.reset()
            self._log.info("iothub connected")
            await self._serve(client, host)
        finally:
            # Bounded tighter than other calls: this also runs when the agent is stopping.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.shutdown(), min(self._timeout, 5.0))

    async def _serve(self, client: Any, host: ManagementHost) -> None:  # noqa: ANN401
        loop = asyncio.get_running_loop()
        last_reported: dict[str, Any] | None = None
        next_telemetry = loop.time() + self._telemetry_interval_s
        while True:
            reported = host.reported()
            if reported != last_reported:
                await asyncio.wait_for(client.patch_twin_reported_properties(reported), self._timeout)
                last_reported = reported
            if loop.time() >= next_telemetry:
                next_telemetry = loop.time() + self._telemetry_interval_s
                usage = host.take_usage()
                if any(usage.values()):
                    message = Message(  # type: ignore[no-untyped-call]
                        json.dumps(usage), content_encoding="utf-8", content_type="application/json"
                    )
                    message.custom_properties["kind"] = "amora-usage"
                    try:
                        await asyncio.wait_for(client.send_message(message), self._timeout)
                    except BaseException:
                        host.restore_usage(usage)
                        raise
            await asyncio.sleep(min(self._report_interval_s, max(0.0, next_telemetry - loop.time())))
