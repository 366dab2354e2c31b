"""A small, synchronous MQTT 5 client for the harness and its tests, on paho-mqtt.

The harness needs MQTT before any package's client exists (readiness, the dynsec admin
helper, bridge checks) and over secure websockets, which gmqtt lacks. paho-mqtt speaks
MQTT 5 over TLS and TLS websockets; this module only shapes it for blocking use with
bounded timeouts: no background thread (every call drives paho's network loop itself until
its answer arrives or the timeout passes) and no automatic reconnection (a lost connection
is reported, never hidden). It is not meant for production use.

paho-mqtt stays below 2.0 because azure-iot-device (the agent's IoT Hub client) pins
``paho-mqtt<2`` and the workspace shares one environment. paho 1.6 does not report a
PUBACK's reason code, so a QoS 1 publish the broker refused (0x87, not authorised) looks
delivered here: tests check what a subscriber receives instead.

Messages that arrive while waiting for an acknowledgement wait in a bounded buffer
(`MAX_PENDING`); when it is full the oldest is dropped (policy: the harness only ever
reads its latest answers).
"""

from __future__ import annotations

import collections
import socket
import ssl
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Self

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from amora_devtools._errors import MqttError, MqttRefused
from amora_devtools._proc import ClosedOnExit

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

__all__ = [
    "MAX_PENDING",
    "Message",
    "MqttClient",
    "Will",
    "client_ssl_context",
]

MAX_PENDING: Final = 1000
_WEBSOCKET_PATH: Final = "/mqtt"
# paho's loop() waits at most this long per call, so deadlines are honoured closely.
_LOOP_SLICE_S: Final = 0.05


def client_ssl_context(
    ca_file: Path | str,
    *,
    cert_file: Path | str | None = None,
    key_file: Path | str | None = None,
) -> ssl.SSLContext:
    """A TLS 1.2+ client context that trusts ``ca_file`` and checks the host name.

    Args:
        ca_file: The development CA (`DevPKI.ca_file`).
        cert_file: Client certificate, for the device listener.
        key_file: Its private key.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_verify_locations(cafile=str(ca_file))
    if cert_file is not None:
        ctx.load_cert_chain(str(cert_file), None if key_file is None else str(key_file))
    return ctx


@dataclass(frozen=True, slots=True)
class Message:
    """A received PUBLISH."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    content_type: str | None = None
    response_topic: str | None = None
    correlation_data: bytes | None = None
    message_expiry: int | None = None
    user_properties: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Will:
    """A Last Will for CONNECT."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False


def _code(value: Any) -> int:  # noqa: ANN401 - paho hands over ReasonCodes or plain ints
    return int(value.value if hasattr(value, "value") else value)


def _message(raw: Any) -> Message:  # noqa: ANN401 - paho.MQTTMessage is untyped
    props = getattr(raw, "properties", None)

    def prop(name: str) -> Any:  # noqa: ANN401 - property values are str, bytes or int
        return getattr(props, name, None) if props is not None else None

    user = prop("UserProperty") or []
    return Message(
        topic=str(raw.topic),
        payload=bytes(raw.payload),
        qos=int(raw.qos),
        retain=bool(raw.retain),
        content_type=prop("ContentType"),
        response_topic=prop("ResponseTopic"),
        correlation_data=prop("CorrelationData"),
        message_expiry=prop("MessageExpiryInterval"),
        user_properties=tuple((str(k), str(v)) for k, v in user),
    )


@dataclass
class _Events:
    """What paho's callbacks report, read by the blocking calls that drive its loop."""

    connack: tuple[int, bool] | None = None
    closed: int | None = None
    subacks: dict[int, int] = field(default_factory=dict)
    unsubacks: dict[int, int] = field(default_factory=dict)
    published: set[int] = field(default_factory=set)
    messages: collections.deque[Message] = field(default_factory=lambda: collections.deque(maxlen=MAX_PENDING))


class MqttClient(ClosedOnExit):
    """A connected MQTT 5 session. Build it with `MqttClient.connect`.

    Use it as a context manager; leaving it sends DISCONNECT and closes the socket.

    Attributes:
        session_present: The CONNACK's session-present flag.
    """

    def __init__(self, client: paho.Client, events: _Events, *, timeout: float) -> None:
        """Wrap a connected paho client (use `connect`)."""
        self._client = client
        self._events = events
        self._timeout = timeout
        self.session_present = bool(events.connack and events.connack[1])

    @classmethod
    def connect(  # noqa: PLR0913 - mirrors the CONNECT packet's fields
        cls,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext,
        client_id: str = "",
        username: str | None = None,
        password: str | None = None,
        websocket: bool = False,
        clean_start: bool = True,
        session_expiry: int = 0,
        keepalive: int = 60,
        will: Will | None = None,
        timeout: float = 5.0,
    ) -> Self:
        """Open TLS (or TLS websocket), send CONNECT, and wait for CONNACK.

        Raises:
            MqttRefused: CONNACK carried a failure reason code.
            MqttError: The TLS handshake failed, the connection was closed or timed out.
        """
        events = _Events()
        client = paho.Client(client_id=client_id, protocol=paho.MQTTv5, transport="websockets" if websocket else "tcp")
        if websocket:
            client.ws_set_options(path=_WEBSOCKET_PATH)
        client.tls_set_context(ssl_context)
        if username is not None:
            client.username_pw_set(username, password)
        if will is not None:
            client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
        _bind(client, events)
        properties = None
        if session_expiry:
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = session_expiry
        self = cls(client, events, timeout=timeout)
        deadline = time.monotonic() + timeout
        try:
            client.connect(host, port, keepalive=keepalive, clean_start=clean_start, properties=properties)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError; WebsocketConnectionError a ValueError
            self.drop()
            _close_sockets_left_in(exc)
            raise MqttError(f"cannot connect to {host}:{port}: {exc!r}") from exc
        try:
            self._drive(lambda: events.connack is not None, deadline, waiting_for="CONNACK")
        except MqttError:
            self.drop()
            raise
        reason, session_present = events.connack or (0x80, False)  # set: _drive returned
        if reason >= 0x80:  # MQTT 5: reason codes from 0x80 are failures
            self.drop()
            raise MqttRefused(reason)
        self.session_present = session_present
        return self

    def close(self) -> None:
        """`disconnect` (what leaving a with-block does)."""
        self.disconnect()

    def _drive(self, done: Callable[[], bool], deadline: float, *, waiting_for: str) -> None:
        """Run paho's network loop until ``done()``; raise if the connection ends or time runs out."""
        while not done():
            if self._events.closed is not None:
                raise MqttError(f"the broker closed the connection (reason 0x{self._events.closed:02x})")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise MqttError(f"timed out waiting for {waiting_for}")
            try:
                rc = self._client.loop(timeout=min(remaining, _LOOP_SLICE_S))
            except OSError as exc:  # TLS alerts (a refused certificate under TLS 1.3), resets
                if self._events.closed is None:
                    self._events.closed = 0
                raise MqttError(f"connection failed while waiting for {waiting_for}: {exc!r}") from exc
            if rc != paho.MQTT_ERR_SUCCESS and self._events.closed is None:
                self._events.closed = 0
                raise MqttError(f"connection failed while waiting for {waiting_for}: {paho.error_string(rc)}")

    def subscribe(self, topic_filter: str, *, qos: int = 1, timeout: float | None = None) -> int:
        """Subscribe and return the SUBACK reason code (0-2 granted QoS, >= 0x80 refused).

        Raises:
            MqttError: No SUBACK in time, or the connection failed.
        """
        rc, mid = self._client.subscribe(topic_filter, qos=qos)
        if rc != paho.MQTT_ERR_SUCCESS:
            raise MqttError(f"cannot subscribe: {paho.error_string(rc)}")
        self._drive(lambda: mid in self._events.subacks, self._deadline(timeout), waiting_for="SUBACK")
        return self._events.subacks.pop(mid)

    def unsubscribe(self, topic_filter: str, *, timeout: float | None = None) -> int:
        """Unsubscribe and return the UNSUBACK reason code (0 done, 0x11 no such subscription, >= 0x80 refused).

        Raises:
            MqttError: No UNSUBACK in time, or the connection failed.
        """
        rc, mid = self._client.unsubscribe(topic_filter)
        if rc != paho.MQTT_ERR_SUCCESS:
            raise MqttError(f"cannot unsubscribe: {paho.error_string(rc)}")
        self._drive(lambda: mid in self._events.unsubacks, self._deadline(timeout), waiting_for="UNSUBACK")
        return self._events.unsubacks.pop(mid)

    def publish(  # noqa: PLR0913 - mirrors the PUBLISH packet's fields
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 0,
        retain: bool = False,
        content_type: str | None = None,
        response_topic: str | None = None,
        correlation_data: bytes | None = None,
        message_expiry: int | None = None,
        timeout: float | None = None,
    ) -> None:
        """Publish; at QoS 1 and 2 wait until the broker acknowledged it.

        The broker drops a publish it does not authorise (at QoS 0 silently; at QoS 1 with
        a PUBACK reason code that paho 1.6 does not report): check delivery with a subscriber.

        Raises:
            MqttError: No acknowledgement in time, or the connection failed.
        """
        properties = Properties(PacketTypes.PUBLISH)
        if message_expiry is not None:
            properties.MessageExpiryInterval = message_expiry
        if content_type is not None:
            properties.ContentType = content_type
        if response_topic is not None:
            properties.ResponseTopic = response_topic
        if correlation_data is not None:
            properties.CorrelationData = correlation_data
        info = self._client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise MqttError(f"cannot publish: {paho.error_string(info.rc)}")
        deadline = self._deadline(timeout)
        if qos:
            self._drive(lambda: info.mid in self._events.published, deadline, waiting_for="PUBACK")
            self._events.published.discard(info.mid)
        else:
            # QoS 0 has no answer: drive the loop until paho has written the packet.
            self._drive(info.is_published, deadline, waiting_for="the publish to be written")
            self._events.published.discard(info.mid)

    def receive(self, *, timeout: float | None = None) -> Message | None:
        """Return the next received message, or ``None`` if none came within ``timeout``.

        Raises:
            MqttError: The connection failed or the broker disconnected us.
        """
        messages = self._events.messages
        if not messages:
            try:
                self._drive(lambda: bool(messages), self._deadline(timeout), waiting_for="a message")
            except MqttError:
                if self._events.closed is not None:
                    raise
                return None  # only the time ran out
        return messages.popleft()

    def closed_by_broker(self, *, timeout: float | None = None) -> bool:
        """Wait until the broker ends the connection; ``False`` if it is still open.

        Messages that arrive meanwhile are kept for `receive`.
        """
        try:
            self._drive(lambda: False, self._deadline(timeout), waiting_for="the broker to close")
        except MqttError:
            return self._events.closed is not None
        return False  # pragma: no cover - _drive only returns when done() is true

    def disconnect(self) -> None:
        """Send DISCONNECT (reason 0, no will) and close. Idempotent; never raises."""
        if self._events.closed is None:
            self._client.disconnect()  # paho writes it at once and closes the socket
            self._events.closed = 0
        self.drop()

    def drop(self) -> None:
        """Close the socket without DISCONNECT (the broker then sends the will)."""
        sock = self._client.socket()
        if sock is not None:
            sock.close()
        if self._events.closed is None:
            self._events.closed = 0

    def _deadline(self, timeout: float | None) -> float:
        return time.monotonic() + (self._timeout if timeout is None else timeout)


def _close_sockets_left_in(exc: BaseException) -> None:
    """Close the sockets a failed ``paho.Client.connect`` left in its frames.

    paho keeps the socket of a failed TLS handshake in a local of its ``reconnect()`` and never
    closes it; the exception's traceback keeps it alive until some later collection, whose
    ``ResourceWarning`` then lands in whatever test runs at that moment (seen in CI: a probe that
    connected to itself, an ephemeral port equal to a not-yet-listening broker's).
    """
    tb = exc.__traceback__
    while tb is not None:
        for value in tb.tb_frame.f_locals.values():
            if isinstance(value, socket.socket):
                value.close()
        tb = tb.tb_next


def _bind(client: paho.Client, events: _Events) -> None:
    """Point paho's callbacks at ``events`` (they run inside ``loop()``, on the caller's thread)."""

    def on_connect(_c: object, _u: object, flags: dict[str, Any], rc: object, _props: object = None) -> None:
        events.connack = (_code(rc), bool(flags.get("session present")))

    def on_disconnect(_c: object, _u: object, rc: object, _props: object = None) -> None:
        if events.closed is None:
            events.closed = _code(rc)

    def on_subscribe(_c: object, _u: object, mid: int, codes: list[object], _props: object = None) -> None:
        events.subacks[mid] = _code(codes[0])

    def on_unsubscribe(_c: object, _u: object, mid: int, _props: object = None, codes: object = None) -> None:
        first = codes[0] if isinstance(codes, list) and codes else (codes if codes is not None else 0)
        events.unsubacks[mid] = _code(first)

    def on_publish(_c: object, _u: object, mid: int) -> None:
        events.published.add(mid)

    def on_message(_c: object, _u: object, raw: object) -> None:
        events.messages.append(_message(raw))

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    client.on_subscribe = on_subscribe
    client.on_unsubscribe = on_unsubscribe
    client.on_publish = on_publish
    client.on_message = on_message
