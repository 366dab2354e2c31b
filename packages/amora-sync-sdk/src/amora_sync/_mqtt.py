"""The SDK's adapter over gmqtt (``mqtts://``): one MQTT 5 link, gmqtt's reconnect switched off.

Every use of gmqtt in the SDK is in this module. gmqtt reconnects on a fixed delay to the
same endpoint, never fails over and never resubscribes, so the SDK owns reconnection
(`_connection.ConnectionLoop`; docs/decisions/0003-packages-own-reconnection.md) and this
adapter turns "the connection is gone" into an `asyncio.Event` the owner waits on. It is
one of the two implementations of `_link.Link`; gmqtt has no websocket transport, so
``wss://`` endpoints go through `_websocket.WebSocketLink` (paho-mqtt).

gmqtt's public API covers nearly all of it: `Client` and its callbacks, `connect`,
`subscribe`, `publish`, `disconnect`, the `reconnect_retries` setting, the
`persistent_storage` argument (so the adapter holds the in-flight store it waits on) and
`MQTTConnectError`. The one thing it does not offer (cutting a socket at once) is done in
the section marked "gmqtt internals" at the end, against the tested range in
`TESTED_GMQTT` (the package pins it; ``tests/test_mqtt_adapter.py`` fails loudly when
gmqtt changes under it).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import ssl
from typing import TYPE_CHECKING, Any

import gmqtt
from gmqtt.storage import PersistentStorage

from amora_sync._link import CLOSE_LIMIT, PROBE_TOPIC, Answers, LinkError, quiet_by_default, untrusted_error

if TYPE_CHECKING:
    from collections.abc import Mapping

    from amora_sync._link import AckingHandler, MessageHandler
    from amora_sync._session import Endpoint

__all__ = ["NO_RECONNECT", "TESTED_GMQTT", "MqttLink", "gmqtt_version"]

TESTED_GMQTT = ((0, 8), (0, 9))
"""gmqtt versions this adapter is tested with: at least the first, below the second."""

NO_RECONNECT = -2
"""gmqtt's ``reconnect_retries`` value that switches its reconnect off.

gmqtt reconnects while its failed attempts are ``<= reconnect_retries``, with -1 meaning
"forever"; its own ``stop_reconnect()`` sets 0, which still allows one reconnect. Any value
below -1 allows none. Set with ``client.set_config({"reconnect_retries": NO_RECONNECT})``:
the one way the project switches gmqtt's reconnect off (docs/decisions/0003).
"""


class _QuietRefusedReconnect(logging.Filter):
    """Drop gmqtt's error that its reconnect is refused: with it switched off, that is the point."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("[Client] max number of failed connection attempts")


def gmqtt_version() -> tuple[int, ...]:
    """Return the installed gmqtt's version as numbers (``(0, 8, 0)``)."""
    return tuple(int(part) for part in str(gmqtt.__version__).split(".")[:3] if part.isdigit())


def _refusal_code(exc: gmqtt.MQTTConnectError) -> int | None:
    # gmqtt raises MQTTConnectError(code): the code is the exception's first argument.
    code = exc.args[0] if exc.args else None
    return code if isinstance(code, int) else None


class MqttLink:
    """One broker credential (one client id, one persistent session) over gmqtt.

    Each connection attempt gets a fresh gmqtt client. gmqtt drops its in-flight store when
    a broker has lost the session (a failover, a broker restart) but never frees the packet
    ids of what it dropped, nor of a SUBSCRIBE or UNSUBSCRIBE left unanswered by a broker
    that hung; with mosquitto's receive maximum of 20 a long-lived client would run out of
    ids after a few such events and could neither publish nor subscribe again. A fresh
    client starts with every id free. What a resumed session would have replayed from the
    old client is covered by the outbox, which resends every unanswered command on every
    new link.
    """

    def __init__(  # noqa: PLR0913 - keyword-only connection settings
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

        An ``on_message`` coroutine function makes the link acknowledge each QoS 1 message
        only after it returned (gmqtt's ``optimistic_acknowledgement`` off): a message whose
        handler never finished (the process died, the link dropped) is delivered again.
        ``will`` is a Last Will (topic, payload, will delay in seconds), published retained.
        """
        self.client_id = client_id
        self._acking = inspect.iscoroutinefunction(on_message)
        self._will = will
        self._username = username
        self._password = password
        self._session_expiry = session_expiry
        self._logger = logger
        self._on_message_cb = on_message
        self._gmqtt_logger = logger.getChild("gmqtt")
        # gmqtt's client logs to the logger it is given, its protocol modules to "gmqtt.*".
        quiet_by_default(self._gmqtt_logger)
        quiet_by_default(logging.getLogger("gmqtt"))
        if not any(isinstance(f, _QuietRefusedReconnect) for f in self._gmqtt_logger.filters):
            self._gmqtt_logger.addFilter(_QuietRefusedReconnect())
        self._inflight, self._client = self._new_client()
        self._session_present = False
        self._keepalive = keepalive
        self._answers = Answers()
        self.last_inbound = 0.0
        """Loop time of the last packet seen from the broker (message, CONNACK, SUBACK, UNSUBACK)."""
        self.lost = asyncio.Event()
        self.lost.set()
        self.endpoint: Endpoint | None = None

    def _new_client(self) -> tuple[PersistentStorage, gmqtt.Client]:
        # QoS 1/2 publishes stay in `inflight` until acknowledged; we hold it to wait for
        # it to drain (the broker's receive maximum).
        inflight = PersistentStorage()
        will = None
        if self._will is not None:
            topic, payload, delay = self._will
            will = gmqtt.Message(topic, payload, qos=1, retain=True, will_delay_interval=delay)
        client = gmqtt.Client(
            self.client_id,
            clean_session=False,
            logger=self._gmqtt_logger,
            session_expiry_interval=self._session_expiry,
            persistent_storage=inflight,
            optimistic_acknowledgement=not self._acking,
            will_message=will,
        )
        client.set_config({"reconnect_retries": NO_RECONNECT})
        client.set_auth_credentials(self._username, self._password)
        client.on_message = self._handle_message_acked if self._acking else self._handle_message
        client.on_disconnect = self._handle_disconnect
        client.on_subscribe = self._handle_suback
        client.on_connect = self._handle_connect
        client.on_unsubscribe = self._handle_unsuback
        return inflight, client

    @property
    def connected(self) -> bool:
        """Whether the link is up (CONNACK received, not lost since)."""
        return not self.lost.is_set()

    def use_credential(self, *, username: str, password: str) -> None:
        """Send this user name and password at the next CONNECT (the live connection is unaffected)."""
        self._username = username
        self._password = password

    def _heard(self) -> None:
        self.last_inbound = asyncio.get_running_loop().time()

    def _handle_message(
        self, client: object, topic: str, payload: bytes, _qos: int, properties: Mapping[str, Any]
    ) -> None:
        if client is not self._client:
            return  # a superseded connection's last words
        self._heard()
        try:
            self._on_message_cb(topic, payload, properties)
        except Exception:
            # A bug in the owner's handler must not kill gmqtt's read loop.
            self._logger.exception("amora-sync: message handler failed for %s", topic)

    async def _handle_message_acked(
        self, client: object, topic: str, payload: bytes, _qos: int, properties: Mapping[str, Any]
    ) -> int:
        """Gmqtt sends the PUBACK (with the code returned) once this returns."""
        if client is not self._client:
            return 0  # a superseded connection: its transport is gone, nothing is sent
        self._heard()
        try:
            await self._on_message_cb(topic, payload, properties)  # type: ignore[misc]
        except asyncio.CancelledError:
            # The owner gave up on it (the link is going): cut the link so that no PUBACK
            # goes out; the broker sends the message again on the next connection.
            self.abort()
        except Exception:
            self._logger.exception("amora-sync: message handler failed for %s; not acknowledged", topic)
            self.abort()
        return 0

    def _handle_connect(self, client: object, flags: int, _rc: int, _properties: object) -> None:
        if client is not self._client:
            return
        self._heard()
        self._session_present = bool(flags)

    def _handle_disconnect(self, client: object, _packet: object, *_exc: object) -> None:
        if client is not self._client:
            return
        if not self.lost.is_set():
            self._logger.info("amora-sync: connection to %s lost", self.endpoint)
        self._mark_lost()

    def _mark_lost(self) -> None:
        self.lost.set()
        self._answers.fail_all()

    def _handle_unsuback(self, client: object, mid: int, _codes: object) -> None:
        if client is not self._client:
            return
        self._heard()
        self._answers.unsuback(mid)

    def _handle_suback(self, client: object, mid: int, granted: tuple[int, ...], _properties: object) -> None:
        if client is not self._client:
            return
        self._heard()
        self._answers.suback(mid, tuple(granted))

    async def connect(self, endpoint: Endpoint, *, ssl_context: ssl.SSLContext, limit: float) -> bool:
        """Connect to `endpoint`; return whether the broker still had our session.

        Raises:
            LinkError: The connection failed or was refused.
        """
        self.endpoint = endpoint
        self._session_present = False
        _abort_transport(self._client)  # the previous connection, if any, is over
        self._inflight, self._client = self._new_client()
        try:
            async with asyncio.timeout(limit):
                await self._client.connect(
                    endpoint.host,
                    endpoint.port,
                    ssl=ssl_context,
                    keepalive=self._keepalive,
                )
        except gmqtt.MQTTConnectError as exc:
            self.abort()
            code = _refusal_code(exc)
            raise LinkError(f"broker {endpoint} refused the connection: {exc}", reason_code=code) from exc
        except ssl.SSLCertVerificationError as exc:
            self.abort()
            raise untrusted_error(endpoint, exc) from exc
        except (OSError, TimeoutError) as exc:
            self.abort()
            raise LinkError(f"cannot connect to {endpoint}: {exc!r}") from exc
        self.lost.clear()
        if not self._client.is_connected:
            self._mark_lost()
            raise LinkError(f"connection to {endpoint} dropped during set-up")
        return self._session_present

    async def subscribe(self, topics: list[str], *, qos: int, limit: float) -> tuple[int, ...]:
        """Subscribe to `topics` in one SUBSCRIBE; return the granted codes.

        Raises:
            LinkError: The SUBACK did not arrive in time or the link dropped.
        """
        if not self.connected:
            raise LinkError("not connected")
        subs = [gmqtt.Subscription(topic, qos=qos) for topic in topics]
        try:
            mid = self._client.subscribe(subs)
        except OverflowError as exc:  # every packet id is in flight
            raise LinkError("no packet id free for SUBSCRIBE") from exc
        return await self._answers.wait_suback(mid, limit=limit)

    async def probe(self, *, limit: float) -> bool:
        """Ask the broker for an answer (an UNSUBSCRIBE round trip); return whether it came.

        Returns:
            True when the broker answered within `limit` seconds (or no packet id was free,
            which means acknowledgements are pending: nothing to conclude), False when it
            did not answer or the link dropped meanwhile.
        """
        if not self.connected:
            return False
        try:
            mid = self._client.unsubscribe(PROBE_TOPIC)
        except OverflowError:
            return True
        return await self._answers.answered(mid, limit=limit)

    def publish(self, topic: str, payload: bytes, *, qos: int, **properties: object) -> bool:
        """Publish (QoS 1/2 are kept until acknowledged, across reconnects to the same session).

        Returns:
            False when the broker's receive maximum is reached (too many QoS 1/2
            publishes unacknowledged): nothing was sent, try again once they drain.
        """
        try:
            self._client.publish(topic, payload, qos=qos, **properties)
        except OverflowError:
            return False
        return True

    async def wait_inflight_drained(self) -> None:
        """Wait until every QoS 1/2 publish is acknowledged, or the link is lost."""
        drained = asyncio.ensure_future(self._inflight.wait_empty())
        lost = asyncio.ensure_future(self.lost.wait())
        try:
            await asyncio.wait({drained, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (drained, lost):
                task.cancel()

    async def close(self, *, end_session: bool = False) -> None:
        """Disconnect: a DISCONNECT if the broker takes it within a second, else cut the socket.

        Never blocks longer than that: a hung broker (stopped, not dead) would otherwise
        hold the TLS shutdown for asyncio's full shutdown timeout.

        Args:
            end_session: Also tell the broker to drop our session now (MQTT 5
                DISCONNECT with session expiry 0) instead of keeping it until it expires.
        """
        was_up = self.connected
        self._mark_lost()
        if was_up:
            properties = {"session_expiry_interval": 0} if end_session else {}
            try:
                async with asyncio.timeout(CLOSE_LIMIT):
                    await self._client.disconnect(**properties)
            except Exception:  # noqa: BLE001 - closing: nothing useful to report
                self._logger.debug("amora-sync: ignored error while disconnecting")
        self.abort()

    def abort(self) -> None:
        """Cut the connection at once, without a DISCONNECT (never blocks)."""
        self._mark_lost()
        _abort_transport(self._client)


# ---------------------------------------------------------------------- gmqtt internals
#
# The one place where gmqtt's public API falls short. It is checked against the installed
# gmqtt by tests/test_mqtt_adapter.py; TESTED_GMQTT and the package's pin say which
# versions it was written for.


def _abort_transport(client: gmqtt.Client) -> bool:
    # gmqtt's disconnect() (and its keepalive) close the socket gracefully: under TLS that
    # waits for the peer's close_notify for asyncio's shutdown timeout (30 s), which a
    # stopped broker never sends. Aborting the transport drops it at once. gmqtt exposes
    # neither the transport nor an abort; `_connection._transport` is where 0.8 keeps it.
    # Returns whether there was a transport to abort (tests check that gmqtt still has it).
    connection = getattr(client, "_connection", None)
    transport = getattr(connection, "_transport", None)
    if transport is None:
        return False
    transport.abort()
    return True
