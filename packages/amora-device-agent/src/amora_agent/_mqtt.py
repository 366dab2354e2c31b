"""The agent's MQTT 5 link: one gmqtt connection at a time, reconnection owned here.

Strategy: gmqtt reconnects after a fixed delay, always to the same host, and never
resubscribes (docs/decisions/0003-packages-own-reconnection.md). So its reconnection is
switched off and every attempt uses a fresh gmqtt client: endpoints are tried in order
(the first is preferred), rounds are separated by exponential backoff with full jitter,
the session is persistent
(``clean_start=False`` with a session expiry) and subscriptions are renewed whenever
the broker says it kept no session (and on the first connection to each broker). While
on a fallback endpoint, the preferred ones are probed now and then, and the link moves
back as soon as one answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from typing import TYPE_CHECKING, Any, Final

import gmqtt
import structlog

from amora_protocol import Backoff

if TYPE_CHECKING:
    import ssl
    from collections.abc import Callable, Sequence

    from amora_agent._config import BrokerEndpoint

__all__ = ["InboundMessage", "MqttLink", "Will"]

_NO_RECONNECT: Final = -2  # gmqtt: any value below -1 disables its own reconnection
_SUBACK_TIMEOUT_S: Final = 10.0
_gmqtt_logger = logging.getLogger("amora_agent.gmqtt")


@dataclasses.dataclass(frozen=True, slots=True)
class InboundMessage:
    """A message received on a subscription, with the MQTT 5 properties the agent uses."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    content_type: str | None
    correlation_data: bytes | None
    response_topic: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class Will:
    """The Last Will to register with each connection."""

    topic: str
    payload: bytes
    content_type: str


def _prop(properties: dict[str, Any], name: str) -> Any:  # noqa: ANN401 - gmqtt's untyped values
    value = properties.get(name)
    if isinstance(value, list):
        return value[0] if value else None
    return value


class MqttLink:
    """Keeps one MQTT 5 connection to the best reachable broker, forever.

    Args:
        client_id: The MQTT client id (the device id: the broker enforces it).
        endpoints: Brokers in order of preference.
        ssl_context: TLS with the device certificate.
        subscriptions: (topic filter, QoS) to hold.
        on_message: Called for every inbound message (must not block).
        on_connected: Called after each connection is up and subscribed.
        on_disconnected: Called when that connection ends.
        will: Builds the Last Will for the next connection.
        session_expiry_s: How long the broker keeps the session (and queued commands).
        keepalive_s: MQTT keep-alive.
        connect_timeout_s: Bound on one connection attempt.
        backoff: Delays between rounds of attempts.
        failback_interval_s: How often to probe preferred brokers while on a fallback.
        logger: A structlog logger.
    """

    def __init__(  # noqa: PLR0913 - a connection has many knobs, all keyword-only
        self,
        *,
        client_id: str,
        endpoints: Sequence[BrokerEndpoint],
        ssl_context: ssl.SSLContext | None,
        subscriptions: Sequence[tuple[str, int]],
        on_message: Callable[[InboundMessage], None],
        on_connected: Callable[[BrokerEndpoint], None],
        on_disconnected: Callable[[BrokerEndpoint], None],
        will: Callable[[], Will],
        session_expiry_s: int = 600,
        keepalive_s: int = 30,
        connect_timeout_s: float = 10.0,
        backoff: Backoff | None = None,
        failback_interval_s: float = 60.0,
        logger: Any = None,  # noqa: ANN401 - structlog's bound loggers have no common type
    ) -> None:
        """Configure; nothing connects before `run`."""
        if not endpoints:
            raise ValueError("at least one endpoint is needed")
        self._client_id = client_id
        self._endpoints = tuple(endpoints)
        self._ssl = ssl_context
        self._subscriptions = tuple(subscriptions)
        self._on_message = on_message
        self._on_connected = on_connected
        self._on_disconnected = on_disconnected
        self._will = will
        self._session_expiry_s = session_expiry_s
        self._keepalive_s = keepalive_s
        self._connect_timeout_s = connect_timeout_s
        self._backoff = backoff or Backoff(initial=0.5, maximum=60.0)
        self._failback_interval_s = failback_interval_s
        self._log = logger if logger is not None else structlog.get_logger("amora_agent.mqtt")
        self._client: gmqtt.Client | None = None
        self._endpoint: BrokerEndpoint | None = None
        self._reselect = asyncio.Event()
        self._subscribed: set[BrokerEndpoint] = set()
        self.connections = 0
        self.last_error: str | None = None

    @property
    def connected(self) -> bool:
        """Whether a connection is up (and subscribed)."""
        return self._client is not None

    @property
    def endpoint(self) -> BrokerEndpoint | None:
        """The broker in use, if connected."""
        return self._endpoint if self._client is not None else None

    @property
    def endpoints(self) -> tuple[BrokerEndpoint, ...]:
        """The brokers in order of preference."""
        return self._endpoints

    def set_endpoints(self, endpoints: Sequence[BrokerEndpoint]) -> None:
        """Replace the broker list; reconnect now if the current broker is no longer the best."""
        if not endpoints:
            raise ValueError("at least one endpoint is needed")
        new = tuple(endpoints)
        if new == self._endpoints:
            return
        self._endpoints = new
        if self._endpoint is not None and (self._endpoint not in new or self._endpoint != new[0]):
            self._reselect.set()

    def publish(  # noqa: PLR0913 - MQTT 5 publish properties
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        content_type: str | None = None,
        correlation_data: bytes | None = None,
    ) -> bool:
        """Queue a publish on the current connection.

        Returns:
            False when there is no connection (the caller republishes on reconnect).
        """
        client = self._client
        if client is None:
            return False
        properties: dict[str, Any] = {}
        if content_type is not None:
            properties["content_type"] = content_type
        if correlation_data is not None:
            properties["correlation_data"] = correlation_data
        try:
            client.publish(topic, payload, qos=qos, retain=retain, **properties)
        except Exception as exc:  # noqa: BLE001 - gmqtt raises assorted errors on a dead socket
            self._log.warning("publish failed", topic=topic, error=repr(exc))
            return False
        return True

    async def run(self) -> None:
        """Connect, serve, and reconnect until cancelled."""
        while True:
            for index, endpoint in enumerate(self._endpoints):
                connection = await self._connect(endpoint)
                if connection is None:
                    continue
                self._backoff.reset()
                await self._serve(*connection, endpoint, index)
                break
            await asyncio.sleep(self._backoff.next_delay())

    async def _connect(self, endpoint: BrokerEndpoint) -> tuple[gmqtt.Client, asyncio.Event] | None:
        will = self._will()
        client = gmqtt.Client(
            self._client_id,
            clean_session=False,
            will_message=gmqtt.Message(will.topic, will.payload, qos=1, retain=True, content_type=will.content_type),
            session_expiry_interval=self._session_expiry_s,
            logger=_gmqtt_logger,
        )
        client.set_config({"reconnect_retries": _NO_RECONNECT})
        lost = asyncio.Event()
        session: list[bool] = []
        subacks: dict[int, asyncio.Event] = {}

        def on_connect(_c: object, flags: int, _rc: int, _props: object) -> None:
            session.append(bool(flags))

        def on_disconnect(_c: object, _packet: object, _exc: object = None) -> None:
            lost.set()

        granted: dict[int, tuple[int, ...]] = {}

        def on_subscribe(_c: object, mid: int, qos: tuple[int, ...], _props: object) -> None:
            granted[mid] = tuple(qos)
            event = subacks.get(mid)
            if event is not None:
                event.set()

        def on_message(_c: object, topic: str, payload: bytes, qos: int, props: dict[str, Any]) -> int:
            correlation = _prop(props, "correlation_data")
            self._on_message(
                InboundMessage(
                    topic=topic,
                    payload=bytes(payload),
                    qos=qos,
                    retain=bool(_prop(props, "retain")),
                    content_type=_prop(props, "content_type"),
                    correlation_data=bytes(correlation) if correlation is not None else None,
                    response_topic=_prop(props, "response_topic"),
                )
            )
            return 0

        client.on_connect = on_connect
        client.on_disconnect = on_disconnect
        client.on_subscribe = on_subscribe
        client.on_message = on_message
        try:
            await asyncio.wait_for(
                client.connect(
                    endpoint.host,
                    endpoint.port,
                    ssl=self._ssl or False,
                    keepalive=self._keepalive_s,
                ),
                self._connect_timeout_s,
            )
            if not (session and session[0]) or endpoint not in self._subscribed:
                # The broker kept no session, or this process has not seen its subscriptions
                # confirmed there (a session can survive a crash between CONNACK and SUBACK).
                self._subscribed.discard(endpoint)
                await self._subscribe(client, subacks, granted)
                self._subscribed.add(endpoint)
            if lost.is_set():
                raise ConnectionError("connection lost during setup")  # noqa: TRY301
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await asyncio.shield(client.disconnect())
            raise
        except Exception as exc:  # noqa: BLE001 - gmqtt/ssl/socket errors of every kind
            self.last_error = f"{endpoint}: {exc!r}"
            self._log.warning("mqtt connect failed", broker=str(endpoint), error=repr(exc))
            with contextlib.suppress(Exception):
                await client.disconnect()
            return None
        self._log.info("mqtt connected", broker=str(endpoint), session_present=bool(session and session[0]))
        return client, lost

    async def _subscribe(
        self, client: gmqtt.Client, subacks: dict[int, asyncio.Event], granted: dict[int, tuple[int, ...]]
    ) -> None:
        for topic, qos in self._subscriptions:
            mid = client.subscribe(gmqtt.Subscription(topic, qos=qos))
            subacks[mid] = asyncio.Event()
            await asyncio.wait_for(subacks[mid].wait(), _SUBACK_TIMEOUT_S)
            if any(code >= 0x80 for code in granted.get(mid, ())):
                # Usually the broker's ACL (the device's dynsec role is missing).
                raise PermissionError(f"subscription to {topic} refused: {granted[mid]}")

    async def _serve(self, client: gmqtt.Client, lost: asyncio.Event, endpoint: BrokerEndpoint, index: int) -> None:
        self._client = client
        self._endpoint = endpoint
        self._reselect.clear()
        self.connections += 1
        try:
            self._on_connected(endpoint)
            async with asyncio.TaskGroup() as group:
                waits: list[asyncio.Task[Any]] = [
                    group.create_task(lost.wait(), name="amora-agent.mqtt-lost"),
                    group.create_task(self._reselect.wait(), name="amora-agent.mqtt-reselect"),
                ]
                if index > 0:
                    waits.append(group.create_task(self._probe_preferred(index), name="amora-agent.mqtt-failback"))
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                for task in waits:
                    task.cancel()
        finally:
            self._client = None
            self._on_disconnected(endpoint)
            if lost.is_set():
                self._log.warning("mqtt connection lost", broker=str(endpoint))
            else:
                # Moving to a better broker (or shutting down): a normal disconnect, no Will.
                with contextlib.suppress(Exception):
                    await asyncio.shield(client.disconnect())

    async def _probe_preferred(self, index: int) -> None:
        """Return once a broker preferred over the current one accepts TCP connections."""
        while True:
            await asyncio.sleep(self._failback_interval_s)
            for endpoint in self._endpoints[:index]:
                try:
                    _, writer = await asyncio.wait_for(
                        asyncio.open_connection(endpoint.host, endpoint.port),
                        self._connect_timeout_s,
                    )
                except (OSError, TimeoutError):
                    continue
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
                self._log.info("preferred broker is back", broker=str(endpoint))
                return

    async def close(self) -> None:
        """Disconnect normally (the broker drops the Will)."""
        client = self._client
        self._client = None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.disconnect()
