"""The agent's MQTT 5 link: one gmqtt connection at a time, reconnection owned here.

Strategy: gmqtt reconnects after a fixed delay, always to the same host, and never
resubscribes (docs/decisions/0003-packages-own-reconnection.md). So its reconnection is
switched off and every attempt uses a fresh gmqtt client: endpoints are tried in order
(the first is preferred, brokers that were just found hung last), rounds are separated by
exponential backoff with full jitter, the session is persistent (``clean_start=False`` with a
session expiry) and subscriptions are renewed whenever the broker says it kept no session (and
on the first connection to each broker).

A hung broker (stopped, wedged) keeps its TCP connections open and its kernel still
acknowledges bytes, so neither TCP nor a long MQTT keep-alive notices it quickly. The link
therefore probes end to end: after ``liveness_interval_s`` without an answer from the broker
(an acknowledgement, a SUBACK, a message) it re-subscribes to the device's own connection
topic and expects the SUBACK within ``liveness_timeout_s``; a QoS 1/2 publish
left unacknowledged that long counts the same. A broker that fails either is left at once
(the DISCONNECT is sent but never waited on for more than a second) and tried last.

While on a fallback broker, the preferred ones are tried now and then (with jitter, so a
fleet does not move back all at once) with a real MQTT connection; the link moves once one
is up and subscribed, then leaves the fallback with a normal DISCONNECT.

QoS 1/2 publishes waiting for their acknowledgement are bounded (``max_inflight``, and below
the broker's receive maximum) so that gmqtt's packet ids never run out; a publish over the
bound is refused and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import ssl
import time
from typing import TYPE_CHECKING, Any, Final

import gmqtt
import structlog

from amora_agent._tasks import cancel_and_wait
from amora_protocol import Backoff

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from amora_agent._config import BrokerEndpoint

__all__ = ["NO_RECONNECT", "InboundMessage", "MqttLink", "Will"]

NO_RECONNECT: Final = -2
"""gmqtt's ``reconnect_retries`` value that switches its reconnect off.

gmqtt reconnects while its failed attempts are ``<= reconnect_retries`` (-1: unlimited), so
0 still reconnects once; only a value below -1 allows none. The agent's one way to set it.
"""
_CLOSE_TIMEOUT_S: Final = 1.0  # a DISCONNECT to a hung broker is never waited on longer
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
    user_properties: tuple[tuple[str, str], ...] = ()


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


class _Inflight:
    """gmqtt's store of unacknowledged QoS 1/2 publishes (its ``persistent_storage``), counted.

    Same interface as gmqtt's in-memory store; it also knows when the oldest entry went out.
    """

    def __init__(self) -> None:
        # The packages and their first send times in two dicts, both in send order: a
        # (package, time) tuple per publish would be a GC-tracked object alive until its
        # acknowledgement, on the path of every state a player publishes.
        self._messages: dict[int, bytes] = {}
        self._sent: dict[int, float] = {}
        self._waiters: set[asyncio.Future[None]] = set()
        self.acked_at = 0.0
        """`time.monotonic()` of the last acknowledgement (PUBACK, PUBCOMP): the broker answered."""

    def __len__(self) -> int:
        return len(self._messages)

    def __bool__(self) -> bool:
        # gmqtt takes ``persistent_storage or PersistentStorage()``: an empty store must still
        # be the one it uses.
        return True

    def oldest_age(self) -> float:
        """Seconds since the oldest unacknowledged publish went out (0 when none)."""
        for sent in self._sent.values():
            return time.monotonic() - sent
        return 0.0

    def push_message(self, mid: int, raw_package: bytes) -> None:
        # gmqtt also swaps a PUBLISH for its PUBREL here: keep the first send time.
        self._messages[mid] = raw_package
        self._sent.setdefault(mid, time.monotonic())

    def remove_message_by_mid(self, mid: int) -> None:
        self._sent.pop(mid, None)
        if self._messages.pop(mid, None) is not None:
            self.acked_at = time.monotonic()
            if not self._messages:
                self._wake()

    @property
    def is_empty(self) -> bool:
        return not self._messages

    async def wait_empty(self) -> None:
        if not self._messages:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.add(waiter)
        try:
            await waiter
        finally:
            self._waiters.discard(waiter)

    def clear(self) -> None:
        self._messages.clear()
        self._sent.clear()
        self._wake()

    def get_all(self) -> list[tuple[int, bytes]]:
        return list(self._messages.items())

    def _wake(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()


class BrokerClosedError(ConnectionError):
    """The broker closed the connection before CONNACK (during or right after the TLS handshake)."""


def disconnect_reason(_packet: object, exc: object) -> str | None:
    """Why gmqtt saw the connection end: the socket's error, if any."""
    if isinstance(exc, BaseException):
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return None


def failure_reason(exc: BaseException, *, timeout_s: float) -> str:  # noqa: PLR0911 - one answer per failure kind
    """A one-line, operator-facing reason why a connection attempt failed."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS verification failure: the broker's certificate is not trusted ({exc.verify_message})"
    if isinstance(exc, ssl.SSLError) and "REVOKED" in str(exc).upper():
        return "certificate revoked: the broker's CRL lists this device's certificate"
    if isinstance(exc, ssl.SSLError):
        return f"TLS failure: {exc.reason or exc}"
    if isinstance(exc, gmqtt.MQTTConnectError):
        code = exc.args[0] if exc.args else None
        return f"refused by the broker: CONNACK reason {code} ({exc})"
    if isinstance(exc, BrokerClosedError):
        return (
            f"the broker closed the connection before CONNACK ({exc}): the device certificate is "
            "probably revoked (in the broker's CRL) or not signed by a CA the broker trusts"
        )
    if isinstance(exc, TimeoutError):
        return f"no CONNACK within {timeout_s:g} s"
    return repr(exc)


@dataclasses.dataclass(slots=True, eq=False)
class _Connection:
    """One gmqtt client and what the link tracks about it."""

    client: gmqtt.Client
    endpoint: BrokerEndpoint
    inflight: _Inflight
    lost: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    subacks: dict[int, asyncio.Event] = dataclasses.field(default_factory=dict)
    granted: dict[int, tuple[int, ...]] = dataclasses.field(default_factory=dict)
    session_present: bool = False
    receive_maximum: int = 65535
    lost_reason: str | None = None
    """Why the broker ended the connection, when it said (DISCONNECT reason) or the socket did."""
    heard: float = 0.0
    """`time.monotonic()` of the last SUBACK or message from the broker."""


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
        probe_topic: A topic the client may subscribe to, re-subscribed as the liveness
            probe (the device's connection topic; its own messages are not echoed back).
        session_expiry_s: How long the broker keeps the session (and queued commands).
        keepalive_s: MQTT keep-alive.
        connect_timeout_s: Bound on one connection attempt (connect and subscribe).
        backoff: Delays between rounds of attempts.
        failback_interval_s: Mean time between tries of a preferred broker while on a
            fallback (jittered between half and one and a half times it).
        max_inflight: Unacknowledged QoS 1/2 publishes allowed at once.
        liveness_interval_s: Time between liveness probes.
        liveness_timeout_s: How long a probe, or a publish, may go unanswered.
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
        probe_topic: str | None = None,
        session_expiry_s: int = 600,
        keepalive_s: int = 30,
        connect_timeout_s: float = 10.0,
        backoff: Backoff | None = None,
        failback_interval_s: float = 60.0,
        max_inflight: int = 16,
        liveness_interval_s: float = 1.5,
        liveness_timeout_s: float = 2.0,
        logger: structlog.typing.FilteringBoundLogger | None = None,
    ) -> None:
        """Configure; nothing connects before `run`."""
        if not endpoints:
            raise ValueError("at least one endpoint is needed")
        self._client_id = client_id
        self._endpoints = tuple(endpoints)
        self._ssl = ssl_context
        self._subscriptions = tuple(subscriptions)
        self._probe_topic = probe_topic
        self._on_message = on_message
        self._on_connected = on_connected
        self._on_disconnected = on_disconnected
        self._will = will
        self._session_expiry_s = session_expiry_s
        self._keepalive_s = keepalive_s
        self._connect_timeout_s = connect_timeout_s
        self._backoff = backoff or Backoff(initial=0.5, maximum=60.0)
        self._failback_interval_s = failback_interval_s
        self._max_inflight = max_inflight
        self._liveness_interval_s = liveness_interval_s
        self._liveness_timeout_s = liveness_timeout_s
        self._log = logger if logger is not None else structlog.get_logger("amora_agent.mqtt")
        self._current: _Connection | None = None
        self._reselect = asyncio.Event()
        self._subscribed: set[BrokerEndpoint] = set()
        self._hung: set[BrokerEndpoint] = set()
        self.connections = 0
        self.refused_publishes = 0
        self.last_error: str | None = None

    @property
    def connected(self) -> bool:
        """Whether a connection is up (and subscribed)."""
        return self._current is not None

    @property
    def endpoint(self) -> BrokerEndpoint | None:
        """The broker in use, if connected."""
        return self._current.endpoint if self._current is not None else None

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
        current = self.endpoint
        if current is not None and current != new[0]:
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
        user_properties: list[tuple[str, str]] | None = None,
    ) -> bool:
        """Queue a publish on the current connection.

        Returns:
            False when there is no connection, or too many publishes await their
            acknowledgement (the caller republishes what matters on reconnect).
        """
        connection = self._current
        if connection is None:
            return False
        limit = min(self._max_inflight, connection.receive_maximum - 2)
        if qos > 0 and len(connection.inflight) >= limit:
            self.refused_publishes += 1
            self._log.warning(
                "publish refused: too many unacknowledged", topic=topic, inflight=len(connection.inflight)
            )
            return False
        properties: dict[str, Any] = {}
        if content_type is not None:
            properties["content_type"] = content_type
        if correlation_data is not None:
            properties["correlation_data"] = correlation_data
        if user_properties:
            properties["user_property"] = user_properties
        try:
            connection.client.publish(topic, payload, qos=qos, retain=retain, **properties)
        except Exception as exc:  # noqa: BLE001 - gmqtt raises assorted errors on a dead socket
            self._log.warning("publish failed", topic=topic, error=repr(exc))
            return False
        return True

    async def run(self) -> None:
        """Connect, serve, and reconnect until cancelled."""
        while True:
            connection = await self._connect_round()
            while connection is not None:
                self._backoff.reset()
                # Serving returns the next connection when it moved to a preferred broker.
                connection = await self._serve(connection)
            await asyncio.sleep(self._backoff.next_delay())

    def _order(self) -> list[BrokerEndpoint]:
        """Endpoints to try: by preference, brokers just found hung last."""
        return sorted(self._endpoints, key=lambda e: e in self._hung)

    async def _connect_round(self) -> _Connection | None:
        for endpoint in self._order():
            connection = await self._connect(endpoint)
            if connection is not None:
                return connection
        return None

    async def _connect(self, endpoint: BrokerEndpoint) -> _Connection | None:  # noqa: C901 - gmqtt callbacks
        will = self._will()
        inflight = _Inflight()
        client = gmqtt.Client(
            self._client_id,
            clean_session=False,
            will_message=gmqtt.Message(will.topic, will.payload, qos=1, retain=True, content_type=will.content_type),
            session_expiry_interval=self._session_expiry_s,
            persistent_storage=inflight,
            logger=_gmqtt_logger,
        )
        client.set_config({"reconnect_retries": NO_RECONNECT})
        connection = _Connection(client, endpoint, inflight)

        def on_connect(_c: object, flags: int, _rc: int, props: Any) -> None:  # noqa: ANN401 - gmqtt's
            connection.session_present = bool(flags)
            maximum = _prop(props, "receive_maximum") if isinstance(props, dict) else None
            if isinstance(maximum, int) and maximum > 0:
                connection.receive_maximum = maximum

        def on_disconnect(_c: object, packet: object, exc: object = None) -> None:
            connection.lost_reason = disconnect_reason(packet, exc)
            connection.lost.set()

        def on_subscribe(_c: object, mid: int, qos: tuple[int, ...], _props: object) -> None:
            connection.heard = time.monotonic()
            connection.granted[mid] = tuple(qos)
            event = connection.subacks.get(mid)
            if event is not None:
                event.set()

        def on_message(_c: object, topic: str, payload: bytes, qos: int, props: dict[str, Any]) -> int:
            connection.heard = time.monotonic()
            correlation = _prop(props, "correlation_data")
            user = props.get("user_property")
            self._on_message(
                InboundMessage(
                    topic=topic,
                    payload=bytes(payload),
                    qos=qos,
                    retain=bool(_prop(props, "retain")),
                    content_type=_prop(props, "content_type"),
                    correlation_data=bytes(correlation) if correlation is not None else None,
                    response_topic=_prop(props, "response_topic"),
                    user_properties=tuple(user) if user else (),
                )
            )
            return 0

        client.on_connect = on_connect
        client.on_disconnect = on_disconnect
        client.on_subscribe = on_subscribe
        client.on_message = on_message
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                await self._connect_or_lost(client, connection)
                if not connection.session_present or endpoint not in self._subscribed:
                    # The broker kept no session, or this process has not seen its subscriptions
                    # confirmed there (a session can survive a crash between CONNACK and SUBACK).
                    self._subscribed.discard(endpoint)
                    await self._subscribe(connection)
                    self._subscribed.add(endpoint)
            if connection.lost.is_set():
                raise ConnectionError("connection lost during setup")  # noqa: TRY301
        except asyncio.CancelledError:
            await self._close(client)
            raise
        except Exception as exc:  # noqa: BLE001 - gmqtt/ssl/socket errors of every kind
            reason = failure_reason(exc, timeout_s=self._connect_timeout_s)
            self.last_error = f"{endpoint}: {reason}"
            self._log.warning("mqtt connect failed", broker=str(endpoint), reason=reason, error=repr(exc))
            await self._close(client)
            return None
        self._hung.discard(endpoint)
        self._log.info("mqtt connected", broker=str(endpoint), session_present=connection.session_present)
        return connection

    async def _connect_or_lost(self, client: gmqtt.Client, connection: _Connection) -> None:
        """Connect; fail at once when the broker closes the socket before CONNACK.

        gmqtt keeps waiting for a CONNACK after the socket closed (its reconnect is off), so a
        broker rejecting the certificate would otherwise show up only as a timeout.
        """
        endpoint = connection.endpoint
        connecting = asyncio.ensure_future(
            client.connect(endpoint.host, endpoint.port, ssl=self._ssl or False, keepalive=self._keepalive_s)
        )
        lost = asyncio.ensure_future(connection.lost.wait())
        try:
            await asyncio.wait((connecting, lost), return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
            if not connecting.done():
                await cancel_and_wait(connecting, quiet=True)
        if connecting.cancelled() or not connecting.done():
            raise BrokerClosedError(connection.lost_reason or "connection closed")
        connecting.result()

    async def _subscribe(self, connection: _Connection) -> None:
        subscriptions = [gmqtt.Subscription(topic, qos=qos) for topic, qos in self._subscriptions]
        if self._probe_topic is not None:
            # Retained status delivered once; the client's own publishes never echoed back.
            subscriptions.append(gmqtt.Subscription(self._probe_topic, qos=1, no_local=True))
        for subscription in subscriptions:
            mid = connection.client.subscribe(subscription)
            connection.subacks[mid] = asyncio.Event()
            await connection.subacks[mid].wait()
            codes = connection.granted.get(mid, ())
            if any(code >= 0x80 for code in codes):
                # Usually the broker's ACL (the device's dynsec role is missing).
                raise PermissionError(f"subscription to {subscription.topic} refused: {codes}")

    async def _serve(self, connection: _Connection) -> _Connection | None:
        """Serve ``connection`` until it ends; return a better connection if one was made."""
        endpoint = connection.endpoint
        index = self._endpoints.index(endpoint) if endpoint in self._endpoints else len(self._endpoints)
        self._current = connection
        self._reselect.clear()
        self.connections += 1
        hung = False
        better: _Connection | None = None
        try:
            self._on_connected(endpoint)
            async with asyncio.TaskGroup() as group:
                lost = group.create_task(connection.lost.wait(), name="amora-agent.mqtt-lost")
                reselect = group.create_task(self._reselect.wait(), name="amora-agent.mqtt-reselect")
                alive = group.create_task(self._watch_liveness(connection), name="amora-agent.mqtt-liveness")
                waits: list[asyncio.Task[Any]] = [lost, reselect, alive]
                failback = None
                if index > 0:
                    failback = group.create_task(self._try_preferred(index), name="amora-agent.mqtt-failback")
                    waits.append(failback)
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                hung = alive.done() and not lost.done()
                if failback is not None and failback.done() and not failback.cancelled():
                    better = failback.result()
                for task in waits:
                    task.cancel()
        finally:
            self._current = None
            self._on_disconnected(endpoint)
            if connection.lost.is_set():
                self._log.warning(
                    "mqtt connection lost",
                    broker=str(endpoint),
                    reason=connection.lost_reason or "the broker closed the connection",
                )
            else:
                if hung:
                    self._hung.add(endpoint)
                    self._log.warning("broker not answering; leaving it", broker=str(endpoint))
                # Moving on (a better broker, a hung one, shutdown): a normal DISCONNECT, no Will.
                await self._close(connection.client)
        return better

    async def _watch_liveness(self, connection: _Connection) -> None:
        """Return when the broker stops answering (probe SUBACK or publish acks overdue)."""
        if self._probe_topic is None:
            await asyncio.Event().wait()
        probe = gmqtt.Subscription(self._probe_topic, qos=1, no_local=True, retain_handling_options=1)
        interval = self._liveness_interval_s
        while True:
            # Probe after `interval` of silence: an acknowledgement or a message from the
            # broker in the meantime proves its loop works as well as a SUBACK would (a
            # player publishing states answers for itself, and makes no probe's garbage).
            silent = time.monotonic() - max(connection.heard, connection.inflight.acked_at)
            await asyncio.sleep(interval - silent if silent < interval else interval)
            if connection.inflight.oldest_age() > self._liveness_timeout_s:
                return
            if time.monotonic() - max(connection.heard, connection.inflight.acked_at) < interval:
                continue
            try:
                mid = connection.client.resubscribe(probe)
            except Exception:  # noqa: BLE001 - a dead socket: the lost event follows
                return
            answered = connection.subacks[mid] = asyncio.Event()
            try:
                async with asyncio.timeout(self._liveness_timeout_s):
                    await answered.wait()
            except TimeoutError:
                return
            finally:
                connection.subacks.pop(mid, None)

    async def _try_preferred(self, index: int) -> _Connection:
        """Return a connection to a broker preferred over the current one, once one is up."""
        while True:
            await asyncio.sleep(self._failback_interval_s * random.uniform(0.5, 1.5))  # noqa: S311 - jitter
            for endpoint in self._endpoints[:index]:
                connection = await self._connect(endpoint)
                if connection is not None:
                    self._log.info("preferred broker is back", broker=str(endpoint))
                    return connection

    async def _close(self, client: gmqtt.Client) -> None:
        """Disconnect normally (the broker drops the Will), never waiting long on a hung broker."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.disconnect(), _CLOSE_TIMEOUT_S)

    async def close(self) -> None:
        """Disconnect normally (the broker drops the Will)."""
        connection = self._current
        self._current = None
        if connection is not None:
            await self._close(connection.client)
