"""The brokers' own statistics: mosquitto's ``$SYS`` topics, read and exported as metrics.

mosquitto publishes its counters under ``$SYS/broker/...`` every ``sys_interval`` seconds
(10 by default), retained, so a new subscriber gets the latest values at once. One MQTT
connection per broker, with the admin account the service already holds (its dynsec role
must allow subscribing to ``$SYS/#``: the development harness's does; see
docs/observability.md), keeps the latest value of each topic below; the meter reads them
at each collection. While a broker is unreachable its values are dropped, not frozen: a
missing series is what a dashboard should show, and ``amora_authz_broker_reachable`` says why.

Strategy: the connection reconnects by itself with capped exponential backoff; a refused
subscription (the ACL) is logged once per connection with the fix, and retried slowly.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import TYPE_CHECKING, Final

import gmqtt
from gmqtt.mqtt.constants import MQTTv50
from opentelemetry import metrics

from amora_authz._control import client_tls
from amora_authz._gmqtt import new_client
from amora_protocol import Backoff

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    import structlog
    from opentelemetry.metrics import CallbackOptions, Meter, Observation

    from amora_authz._dynsec import BrokerEndpoint

__all__ = ["SYS_TOPICS", "BrokerStats"]

# $SYS topic -> the value it holds.
SYS_TOPICS: Final = {
    "$SYS/broker/clients/connected": "clients_connected",
    "$SYS/broker/messages/received": "messages_received",
    "$SYS/broker/messages/sent": "messages_sent",
    "$SYS/broker/publish/messages/dropped": "messages_dropped",
    "$SYS/broker/uptime": "uptime",
}
_BRIDGES: Final = "$SYS/broker/connection/+/state"

# (instrument, value, unit, counter?, HELP)
_INSTRUMENTS: Final = (
    ("amora_broker_clients_connected", "clients_connected", "{client}", False, "Clients connected to the broker."),
    ("amora_broker_messages_received", "messages_received", "{message}", True, "Messages the broker received."),
    ("amora_broker_messages_sent", "messages_sent", "{message}", True, "Messages the broker sent."),
    (
        "amora_broker_messages_dropped",
        "messages_dropped",
        "{message}",
        True,
        "Messages the broker dropped (queues full: max_queued_messages, offline sessions).",
    ),
    ("amora_broker_uptime", "uptime", "s", False, "Seconds since the broker started."),
)


def _number(payload: bytes) -> float | None:
    """The value of a ``$SYS`` payload (``12``, ``3600 seconds``); None if it is not one."""
    text = payload.decode("utf-8", "replace").split(" ", 1)[0]
    try:
        return float(text)
    except ValueError:
        return None


class BrokerStats:
    """Keeps each broker's latest ``$SYS`` values and exports them on ``meter``.

    Args:
        endpoints: The brokers (admin credentials).
        meter: Where the instruments are made.
        logger: Structured logger.
    """

    def __init__(
        self,
        endpoints: Sequence[BrokerEndpoint],
        *,
        meter: Meter,
        logger: structlog.typing.FilteringBoundLogger,
    ) -> None:
        """Make the instruments (nothing connects before `run`)."""
        self._endpoints = tuple(endpoints)
        self._log = logger
        self.values: dict[str, dict[str, float]] = {e.name: {} for e in endpoints}
        self.bridges: dict[str, dict[str, float]] = {e.name: {} for e in endpoints}
        self.updated = asyncio.Event()
        for name, key, unit, counter, description in _INSTRUMENTS:
            callback = self._observer(key)
            if counter:
                meter.create_observable_counter(name, [callback], unit=unit, description=description)
            else:
                meter.create_observable_gauge(name, [callback], unit=unit, description=description)
        meter.create_observable_gauge(
            "amora_broker_bridge_connected",
            [self._observe_bridges],
            unit="1",
            description="1 while the broker's bridge to another broker is connected, by bridge name.",
        )

    def _observer(self, key: str) -> metrics.CallbackT:
        def observe(_options: CallbackOptions) -> Iterable[Observation]:
            return [
                metrics.Observation(values[key], {"broker": broker})
                for broker, values in self.values.items()
                if key in values
            ]

        return observe

    def _observe_bridges(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [
            metrics.Observation(value, {"broker": broker, "bridge": bridge})
            for broker, bridges in self.bridges.items()
            for bridge, value in bridges.items()
        ]

    async def run(self) -> None:
        """Follow every broker until cancelled."""
        async with asyncio.TaskGroup() as group:
            for endpoint in self._endpoints:
                group.create_task(self._follow(endpoint), name=f"amora-authz[{endpoint.name}].broker-stats")

    async def _follow(self, endpoint: BrokerEndpoint) -> None:
        backoff = Backoff(initial=1.0, maximum=60.0)
        while True:
            try:
                await self._session(endpoint, backoff)
            except Exception as exc:  # noqa: BLE001 - gmqtt/ssl/socket errors: the broker is away
                self._log.debug("broker_stats.unreachable", broker=endpoint.name, error=repr(exc))
            self.values[endpoint.name].clear()
            self.bridges[endpoint.name].clear()
            await asyncio.sleep(backoff.next_delay())

    async def _session(self, endpoint: BrokerEndpoint, backoff: Backoff) -> None:
        lost = asyncio.Event()
        granted: asyncio.Future[tuple[int, ...]] = asyncio.get_running_loop().create_future()
        client = new_client(f"amora-authz-stats-{uuid.uuid4().hex[:8]}")
        client.set_auth_credentials(endpoint.username, endpoint.password)

        def on_message(_c: object, topic: str, payload: bytes, _qos: int, _props: object) -> int:
            self._record(endpoint.name, topic, bytes(payload))
            return 0

        def on_subscribe(_c: object, _mid: int, qos: tuple[int, ...], _props: object) -> None:
            if not granted.done():
                granted.set_result(tuple(qos))

        client.on_message = on_message
        client.on_subscribe = on_subscribe
        client.on_disconnect = lambda *_args: lost.set()
        try:
            async with asyncio.timeout(10.0):
                await client.connect(endpoint.host, endpoint.port, ssl=client_tls(endpoint), version=MQTTv50)
                client.subscribe([gmqtt.Subscription(topic, qos=0) for topic in (*SYS_TOPICS, _BRIDGES)])
                codes = await granted
            if any(code >= 0x80 for code in codes):
                self._log.warning(
                    "broker_stats.refused",
                    broker=endpoint.name,
                    codes=list(codes),
                    fix="allow the service's admin account to subscribe to $SYS/# (dynsec role ACL)",
                )
                backoff.reset()
                await asyncio.sleep(60.0)
                return
            backoff.reset()
            await lost.wait()
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.disconnect(), 1.0)

    def _record(self, broker: str, topic: str, payload: bytes) -> None:
        value = _number(payload)
        if value is None:
            return
        key = SYS_TOPICS.get(topic)
        if key is not None:
            self.values[broker][key] = value
        elif topic.startswith("$SYS/broker/connection/") and topic.endswith("/state"):
            self.bridges[broker][topic.split("/")[3]] = value
        self.updated.set()
