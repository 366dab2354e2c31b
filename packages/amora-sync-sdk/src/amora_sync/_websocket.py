"""The SDK's adapter over paho-mqtt for ``wss://`` endpoints: MQTT 5 over TLS websockets.

gmqtt has no websocket transport, so ``wss://`` endpoints (port 443 passes where 8883/8884 do
not) go through paho-mqtt, behind the same `_link.Link` interface as `_mqtt.MqttLink`: the
connection loop, outbox and subscriptions do not know which one they hold
(docs/decisions/0012-websocket-transport-paho.md). Every use of paho in the SDK is here.

paho is driven from the asyncio loop through its public external-loop API, as aiomqtt
does: ``on_socket_open``/``close``/``register_write``/``unregister_write`` put its socket on
the loop's reader and writer, ``loop_read``/``loop_write`` run there, ``loop_misc`` runs once
a second (keepalive). Only ``connect`` blocks (TCP, TLS and websocket handshakes): it runs
in a short-lived daemon thread, so an attempt can be abandoned at its time limit and an
exiting application never waits for it. paho's own reconnect is never used: each attempt
gets a fresh client, like the gmqtt adapter (no stale packet ids, no replays the outbox
does not know about).

Both paho lines are supported: 1.6 (which azure-iot-device, and so this workspace, pins)
and 2.x (what ``pip install amora-sync-sdk`` alone resolves to): `TESTED_PAHO`.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import ssl
import threading
from typing import TYPE_CHECKING, Any

import paho.mqtt
import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from amora_sync._link import (
    CLOSE_LIMIT,
    PROBE_TOPIC,
    Answers,
    LinkError,
    quiet_by_default,
    untrusted_error,
    wait_either,
)

if TYPE_CHECKING:
    import logging
    from collections.abc import Mapping

    from amora_sync._link import AckingHandler, MessageHandler
    from amora_sync._session import Endpoint

__all__ = ["TESTED_PAHO", "WebSocketLink", "paho_version"]

TESTED_PAHO = ((1, 6), (3, 0))
"""paho-mqtt versions this adapter is tested with: at least the first, below the second."""

_PAHO2 = hasattr(mqtt, "CallbackAPIVersion")  # 2.x wants the callback signatures named
_MISC_INTERVAL = 1.0  # seconds between paho's keepalive checks (loop_misc), as aiomqtt
_MAX_BUFFERED_READS = 256  # loop_read calls per readable event before yielding to the loop
_DEFAULT_RECEIVE_MAXIMUM = 65_535  # MQTT 5 §3.2.2.3.3: no Receive Maximum property means this
_FAILURE = 0x80  # reason codes from here up are failures (MQTT 5 §2.4)

# The MQTT 5 properties the SDK uses, by gmqtt's name (what the outbox passes and the inbound
# verifier reads) -> paho's. Messages reach the handler in gmqtt's shape: a list per name.
_PROPERTY_NAMES = {
    "content_type": "ContentType",
    "correlation_data": "CorrelationData",
    "message_expiry_interval": "MessageExpiryInterval",
    "payload_format_indicator": "PayloadFormatIndicator",
    "response_topic": "ResponseTopic",
    "user_property": "UserProperty",
}


def paho_version() -> tuple[int, ...]:
    """Return the installed paho-mqtt's version as numbers (``(2, 2, 0)``)."""
    return tuple(int(part) for part in str(paho.mqtt.__version__).split(".")[:3] if part.isdigit())


def _publish_properties(properties: Mapping[str, object]) -> Properties:
    props = Properties(PacketTypes.PUBLISH)
    for name, value in properties.items():
        paho_name = _PROPERTY_NAMES.get(name)
        if paho_name is None:
            msg = f"unknown MQTT 5 publish property {name!r} (known: {', '.join(sorted(_PROPERTY_NAMES))})"
            raise TypeError(msg)
        one_pair = name == "user_property" and isinstance(value, tuple) and len(value) == 2  # one (key, value)
        setattr(props, paho_name, [value] if one_pair else value)
    return props


def _received_properties(props: object) -> dict[str, list[Any]]:
    received: dict[str, list[Any]] = {}
    for name, paho_name in _PROPERTY_NAMES.items():
        value = getattr(props, paho_name, None)
        if value is not None:
            received[name] = list(value) if isinstance(value, list) else [value]
    return received


def _check_sent(sent: int, endpoint: Endpoint) -> None:
    if sent != mqtt.MQTT_ERR_SUCCESS:
        raise LinkError(f"cannot send CONNECT to {endpoint}: {mqtt.error_string(sent)}")


def _code(reason: object) -> int:
    # paho 1.6 passes ReasonCodes, 2.x ReasonCode (both with .value), MQTT 3 paths plain ints.
    value = getattr(reason, "value", reason)
    return value if isinstance(value, int) else _FAILURE


class _ClosingContext:
    """The TLS context handed to paho: the caller's, remembering the sockets it wraps.

    paho leaves its socket open when the TLS or the websocket handshake fails (it has not
    kept it yet); the link closes it instead of leaving it to the garbage collector.
    """

    def __init__(self, context: ssl.SSLContext) -> None:
        self._context = context
        self._wrapped: list[ssl.SSLSocket] = []

    @property
    def check_hostname(self) -> bool:
        # paho checks the host name itself only where the context does not.
        return self._context.check_hostname

    def wrap_socket(self, sock: Any, **kwargs: Any) -> ssl.SSLSocket:  # noqa: ANN401 - paho's arguments
        wrapped = self._context.wrap_socket(sock, **kwargs)
        self._wrapped.append(wrapped)
        return wrapped

    def close_all(self) -> None:
        for sock in self._wrapped:
            sock.close()


class WebSocketLink:
    """One broker credential (one client id, one persistent session) over paho, on ``wss://``."""

    def __init__(  # noqa: PLR0913 - keyword-only connection settings, as MqttLink
        self,
        *,
        client_id: str,
        username: str,
        password: str,
        session_expiry: int,
        keepalive: int,
        on_message: MessageHandler | AckingHandler,
        logger: logging.Logger,
        will: tuple[str, bytes, int] | None = None,
    ) -> None:
        """Create the link; nothing is sent until `connect`.

        ``will`` is a Last Will (topic, payload, will delay in seconds), published retained.
        A coroutine ``on_message`` (acknowledge only once it returned) is refused at
        `connect`: paho 1.6 has no manual acknowledgement, so that needs ``mqtts://``.
        """
        self.client_id = client_id
        self._acking = inspect.iscoroutinefunction(on_message)
        self._will = will
        self._username = username
        self._password = password
        self._session_expiry = session_expiry
        self._keepalive = keepalive
        self._on_message_cb = on_message
        self._logger = logger
        self._paho_logger = logger.getChild("paho")
        quiet_by_default(self._paho_logger)  # paho logs every packet at DEBUG
        self._client: Any = None  # the current paho client; None once aborted
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._fd = -1  # the socket's descriptor on the loop's reader (and writer), or -1
        self._sock: Any = None
        self._writing = False
        self._socket_gone = asyncio.Event()  # set while no socket is on the loop
        self._socket_gone.set()
        self._misc: asyncio.TimerHandle | None = None
        self._connack: asyncio.Future[bool] | None = None
        self._answers = Answers()
        self._inflight: set[int] = set()  # QoS 1/2 publishes not yet acknowledged
        self._drained = asyncio.Event()
        self._drained.set()
        self._receive_maximum = _DEFAULT_RECEIVE_MAXIMUM
        self.last_inbound = 0.0
        """Loop time of the last packet seen from the broker."""
        self.lost = asyncio.Event()
        self.lost.set()
        self.endpoint: Endpoint | None = None

    @property
    def connected(self) -> bool:
        """Whether the link is up (CONNACK received, not lost since)."""
        return not self.lost.is_set()

    def use_credential(self, *, username: str, password: str) -> None:
        """Send this user name and password at the next CONNECT (the live connection is unaffected)."""
        self._username = username
        self._password = password

    # ------------------------------------------------------------------ the client

    def _new_client(self, endpoint: Endpoint, tls: _ClosingContext, limit: float) -> Any:  # noqa: ANN401 - paho 1.6 is untyped
        if _PAHO2:
            client = mqtt.Client(
                mqtt.CallbackAPIVersion.VERSION2,
                client_id=self.client_id,
                protocol=mqtt.MQTTv5,
                transport="websockets",
                reconnect_on_failure=False,
            )
            client.connect_timeout = limit  # TCP connect and TLS handshake (1.6: fixed 5 s / keepalive)
        else:
            client = mqtt.Client(
                client_id=self.client_id, protocol=mqtt.MQTTv5, transport="websockets", reconnect_on_failure=False
            )
        client.enable_logger(self._paho_logger)
        client.username_pw_set(self._username, self._password)
        if self._will is not None:
            topic, payload, delay = self._will
            will_properties = Properties(PacketTypes.WILLMESSAGE)
            will_properties.WillDelayInterval = delay
            client.will_set(topic, payload, qos=1, retain=True, properties=will_properties)
        client.ws_set_options(path=endpoint.path)
        client.tls_set_context(tls)
        client.max_inflight_messages_set(0)  # no queue inside paho: the window is kept here
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.on_unsubscribe = self._on_unsubscribe
        client.on_publish = self._on_publish
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_socket_register_write
        client.on_socket_unregister_write = self._on_socket_unregister_write
        return client

    def _heard(self) -> None:
        if self._loop is not None:
            self.last_inbound = self._loop.time()

    # ------------------------------------------------------------------ paho's socket on our loop
    #
    # paho calls these on the loop's thread, except during `connect`, which runs in a worker
    # thread: there they are handed to the loop (`_on_loop`) and check that their client and
    # socket are still the current ones when they run.

    def _on_loop(self, fn: Any, *args: object) -> None:  # noqa: ANN401 - any bound method
        if self._loop is None:
            return
        if threading.get_ident() == self._loop_thread:
            fn(*args)
        else:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nothing to register
                self._loop.call_soon_threadsafe(fn, *args)

    def _on_socket_open(self, client: object, _userdata: object, sock: Any) -> None:  # noqa: ANN401
        self._on_loop(self._register, client, sock)

    def _on_socket_close(self, client: object, _userdata: object, sock: Any) -> None:  # noqa: ANN401
        self._on_loop(self._unregister, client, sock)

    def _on_socket_register_write(self, client: object, _userdata: object, sock: Any) -> None:  # noqa: ANN401
        self._on_loop(self._want_write, client, sock, True)  # noqa: FBT003

    def _on_socket_unregister_write(self, client: object, _userdata: object, sock: Any) -> None:  # noqa: ANN401
        self._on_loop(self._want_write, client, sock, False)  # noqa: FBT003

    def _register(self, client: object, sock: Any) -> None:  # noqa: ANN401
        if client is not self._client or self._loop is None or sock.fileno() < 0:
            return  # an abandoned attempt's socket, or one already closed
        self._drop_socket()
        self._sock, self._fd = sock, sock.fileno()
        self._socket_gone.clear()
        self._loop.add_reader(self._fd, self._readable, client)

    def _unregister(self, _client: object, sock: Any) -> None:  # noqa: ANN401
        if sock is self._sock:
            self._drop_socket()

    def _want_write(self, client: object, sock: Any, want: bool) -> None:  # noqa: ANN401, FBT001
        if client is not self._client or sock is not self._sock or self._loop is None:
            return
        if want and not self._writing:
            self._loop.add_writer(self._fd, self._writable, client)
        elif not want and self._writing:
            self._loop.remove_writer(self._fd)
        self._writing = want

    def _drop_socket(self) -> None:
        # Always before the socket is closed: a descriptor number closed first could already
        # belong to another connection whose reader this would remove.
        if self._sock is not None and self._loop is not None:
            self._loop.remove_reader(self._fd)
            if self._writing:
                self._loop.remove_writer(self._fd)
        self._sock, self._fd, self._writing = None, -1, False
        self._socket_gone.set()

    def _readable(self, client: Any) -> None:  # noqa: ANN401
        if client is not self._client:
            return
        self._heard()
        client.loop_read()
        # TLS decrypts whole records: bytes of the next packets may wait inside the SSL
        # object where the selector cannot see them, so read on while it holds some.
        for _ in range(_MAX_BUFFERED_READS):
            sock = client.socket()
            if sock is None or client is not self._client or not sock.pending():
                return
            client.loop_read()
        if self._loop is not None:
            self._loop.call_soon(self._readable, client)  # more still buffered: after others ran

    def _writable(self, client: Any) -> None:  # noqa: ANN401
        if client is self._client:
            client.loop_write()

    def _tick(self, client: Any) -> None:  # noqa: ANN401
        if client is not self._client or not self.connected or self._loop is None:
            return
        client.loop_misc()  # PINGREQ when due; a missing PINGRESP ends the connection
        self._misc = self._loop.call_later(_MISC_INTERVAL, self._tick, client)

    # ------------------------------------------------------------------ paho's callbacks

    def _on_connect(self, client: object, _userdata: object, flags: Any, reason: object, properties: object) -> None:  # noqa: ANN401
        if client is not self._client or self._connack is None or self._connack.done():
            return
        self._heard()
        code = _code(reason)
        if code >= _FAILURE:
            self._connack.set_exception(
                LinkError(f"broker {self.endpoint} refused the connection: {reason}", reason_code=code)
            )
            return
        receive_maximum = getattr(properties, "ReceiveMaximum", None)
        self._receive_maximum = receive_maximum if isinstance(receive_maximum, int) else _DEFAULT_RECEIVE_MAXIMUM
        # paho 2.x passes ConnectFlags, 1.6 a dict.
        present = flags["session present"] if isinstance(flags, dict) else flags.session_present
        self._connack.set_result(bool(present))

    def _on_disconnect(self, client: object, _userdata: object, *_details: object) -> None:
        if client is not self._client:
            return
        if self._connack is not None and not self._connack.done():
            self._connack.set_exception(LinkError(f"broker {self.endpoint} closed the connection before CONNACK"))
        if not self.lost.is_set():
            self._logger.info("amora-sync: connection to %s lost", self.endpoint)
        self._mark_lost()

    def _on_message(self, client: object, _userdata: object, message: Any) -> None:  # noqa: ANN401
        if client is not self._client:
            return
        topic = message.topic
        try:
            self._on_message_cb(topic, bytes(message.payload), _received_properties(message.properties))
        except Exception:
            # A bug in the owner's handler must not break paho's read loop.
            self._logger.exception("amora-sync: message handler failed for %s", topic)

    def _on_subscribe(self, client: object, _userdata: object, mid: int, codes: Any, _properties: object) -> None:  # noqa: ANN401
        if client is self._client:
            self._answers.suback(mid, tuple(_code(code) for code in codes))

    def _on_unsubscribe(self, client: object, _userdata: object, mid: int, *_details: object) -> None:
        if client is self._client:
            self._answers.unsuback(mid)

    def _on_publish(self, client: object, _userdata: object, mid: int, *_details: object) -> None:
        if client is not self._client:
            return
        self._inflight.discard(mid)
        if not self._inflight:
            self._drained.set()

    def _mark_lost(self) -> None:
        self.lost.set()
        if self._misc is not None:
            self._misc.cancel()
            self._misc = None
        self._answers.fail_all()

    # ------------------------------------------------------------------ the Link interface

    async def connect(self, endpoint: Endpoint, *, ssl_context: ssl.SSLContext, limit: float) -> bool:
        """Connect to `endpoint`; return whether the broker still had our session.

        Raises:
            LinkError: The connection failed or was refused.
        """
        self.abort()  # the previous connection, if any, is over
        self.endpoint = endpoint
        if self._acking:
            msg = (
                f"cannot use {endpoint}: acknowledging each message only after its handler returned "
                "needs an mqtts:// endpoint (paho-mqtt 1.6 has no manual acknowledgement)"
            )
            raise LinkError(msg)
        loop = asyncio.get_running_loop()
        self._loop, self._loop_thread = loop, threading.get_ident()
        tls = _ClosingContext(ssl_context)
        client = self._new_client(endpoint, tls, limit)
        self._client = client
        self._inflight.clear()
        self._drained.set()
        connack: asyncio.Future[bool] = loop.create_future()
        self._connack = connack
        opened: asyncio.Future[int] = loop.create_future()
        worker = threading.Thread(
            target=self._blocking_connect,
            args=(loop, client, tls, endpoint, opened),
            name=f"amora-sync[{self.client_id}].wss-connect",
            daemon=True,
        )
        try:
            async with asyncio.timeout(limit):
                worker.start()
                _check_sent(await opened, endpoint)
                present = await connack
        except ssl.SSLCertVerificationError as exc:
            self.abort()
            raise untrusted_error(endpoint, exc) from exc
        except LinkError:
            self.abort()
            raise
        except (OSError, TimeoutError, mqtt.WebsocketConnectionError) as exc:
            # WebsocketConnectionError: the HTTP upgrade failed (no websocket listener there,
            # wrong path); a ValueError in paho 1.6, a ConnectionError in 2.x.
            self.abort()
            raise LinkError(f"cannot connect to {endpoint}: {exc!r}") from exc
        finally:
            self._connack = None
        self.lost.clear()
        self._misc = loop.call_later(_MISC_INTERVAL, self._tick, client)
        return present

    def _blocking_connect(
        self,
        loop: asyncio.AbstractEventLoop,
        client: Any,  # noqa: ANN401
        tls: _ClosingContext,
        endpoint: Endpoint,
        opened: asyncio.Future[int],
    ) -> None:
        """In the worker thread: TCP, TLS and websocket handshakes, then CONNECT queued."""
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = self._session_expiry
        try:
            sent = client.connect(
                endpoint.host, endpoint.port, keepalive=self._keepalive, clean_start=False, properties=properties
            )
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting coroutine
            tls.close_all()
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._settle, client, opened, exc, None)
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: the thread just ends
            loop.call_soon_threadsafe(self._settle, client, opened, None, sent)

    def _settle(self, client: Any, opened: asyncio.Future[int], exc: BaseException | None, sent: int | None) -> None:  # noqa: ANN401
        if opened.done():  # the attempt was abandoned (time limit, abort): close what it opened
            if exc is None:
                sock = client.socket()
                if sock is not None:
                    sock.close()
            return
        if exc is not None:
            opened.set_exception(exc)
        else:
            opened.set_result(mqtt.MQTT_ERR_UNKNOWN if sent is None else sent)

    async def subscribe(self, topics: list[str], *, qos: int, limit: float) -> tuple[int, ...]:
        """Subscribe to `topics` in one SUBSCRIBE; return the granted codes.

        Raises:
            LinkError: The SUBACK did not arrive in time or the link dropped.
        """
        if not self.connected or self._client is None:
            raise LinkError("not connected")
        sent, mid = self._client.subscribe([(topic, SubscribeOptions(qos=qos)) for topic in topics])
        if sent != mqtt.MQTT_ERR_SUCCESS:
            raise LinkError(f"SUBSCRIBE not sent: {mqtt.error_string(sent)}")
        return await self._answers.wait_suback(mid, limit=limit)

    async def probe(self, *, limit: float) -> bool:
        """Ask the broker for an answer (an UNSUBSCRIBE round trip); return whether it came."""
        if not self.connected or self._client is None:
            return False
        sent, mid = self._client.unsubscribe(PROBE_TOPIC)
        if sent != mqtt.MQTT_ERR_SUCCESS:
            return False
        return await self._answers.answered(mid, limit=limit)

    def publish(self, topic: str, payload: bytes, *, qos: int, **properties: object) -> bool:
        """Publish with MQTT 5 properties given by gmqtt's names (``content_type=...``).

        Returns:
            False when the broker's receive maximum is reached (too many QoS 1/2
            publishes unacknowledged): nothing was sent, try again once they drain.
        """
        client = self._client
        if client is None or not self.connected:
            return True  # as gmqtt: the outbox resends every unanswered command on the next link
        if qos > 0 and len(self._inflight) >= self._receive_maximum:
            return False
        info = client.publish(topic, payload, qos=qos, properties=_publish_properties(properties))
        if qos > 0:
            self._inflight.add(info.mid)
            self._drained.clear()
        return True

    async def wait_inflight_drained(self) -> None:
        """Wait until every QoS 1/2 publish is acknowledged, or the link is lost."""
        await wait_either(self._drained, self.lost)

    async def close(self, *, end_session: bool = False) -> None:
        """Disconnect: a DISCONNECT if the broker takes it within a second, else cut the socket.

        Args:
            end_session: Also tell the broker to drop our session now (MQTT 5
                DISCONNECT with session expiry 0) instead of keeping it until it expires.
        """
        client, was_up = self._client, self.connected
        self._mark_lost()
        if was_up and client is not None and self._sock is not None:
            properties = Properties(PacketTypes.DISCONNECT)
            if end_session:
                properties.SessionExpiryInterval = 0
            client.disconnect(properties=properties)  # paho closes the socket once it is written
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CLOSE_LIMIT):
                    await self._socket_gone.wait()
        self.abort()

    def abort(self) -> None:
        """Cut the connection at once, without a DISCONNECT (never blocks)."""
        self._mark_lost()
        client, sock = self._client, self._sock
        self._client = None  # late callbacks of this client are ignored from now on
        self._drop_socket()
        if sock is not None:
            sock.close()
        elif client is not None and (own := client.socket()) is not None:
            own.close()
