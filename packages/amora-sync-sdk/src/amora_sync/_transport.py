"""One MQTT 5 link over gmqtt, with gmqtt's own reconnect switched off.

gmqtt reconnects on a fixed delay, never fails over and never resubscribes
(docs/decisions/0003-packages-own-reconnection.md). The SDK owns reconnection instead (`_client.AmoraClient`),
so this wrapper turns gmqtt's loop off and turns "the connection is gone"
into an `asyncio.Event` the owner waits on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import gmqtt
from gmqtt.mqtt.handler import MQTTConnectError

if TYPE_CHECKING:
    import logging
    import ssl

    from amora_sync._session import Endpoint

MessageHandler = Callable[[str, bytes, Mapping[str, Any]], None]

# CONNACK reason codes that mean "this credential will not do" (MQTT 5 §3.2.2.2),
# plus the MQTT 3.1.1 equivalents: the SDK then exchanges the token again.
CREDENTIAL_REFUSED = frozenset({4, 5, 133, 134, 135, 138})

_SUBACK_FAILURE = 0x80


class LinkError(Exception):
    """Internal: a connection attempt or subscription failed (translated by the owner).

    Attributes:
        reason_code: The CONNACK/SUBACK reason code, when the broker sent one.
    """

    def __init__(self, message: str, *, reason_code: int | None = None) -> None:
        """Build the error."""
        super().__init__(message)
        self.reason_code = reason_code

    @property
    def credential_refused(self) -> bool:
        """Whether the broker refused the user name, password or client id."""
        return self.reason_code in CREDENTIAL_REFUSED


async def _no_reconnect(*_args: object, **_kwargs: object) -> None:
    """Stand in for gmqtt's reconnect callback: the SDK reconnects by itself."""


class MqttLink:
    """A gmqtt client for one broker credential (one client id, one persistent session)."""

    def __init__(  # noqa: PLR0913 - keyword-only connection settings
        self,
        *,
        client_id: str,
        username: str,
        password: str,
        session_expiry: int,
        keepalive: int,
        on_message: MessageHandler,
        logger: logging.Logger,
    ) -> None:
        """Create the link; nothing is sent until `connect`."""
        self.client_id = client_id
        self._logger = logger
        self._on_message_cb = on_message
        self._client = gmqtt.Client(
            client_id,
            clean_session=False,
            logger=logger.getChild("gmqtt"),
            session_expiry_interval=session_expiry,
        )
        # Strategy: gmqtt schedules its reconnect through the handler's callback
        # (fixed delay, same endpoint, no resubscribe). Replacing that callback is
        # the one way to switch it off without racing it; everything else about
        # the client (QoS in-flight store, packet ids) is kept across our reconnects.
        self._client._package_handler._reconnect_callback = _no_reconnect  # noqa: SLF001
        self._client.set_auth_credentials(username, password)
        self._client.on_message = self._handle_message
        self._client.on_disconnect = self._handle_disconnect
        self._client.on_subscribe = self._handle_suback
        self._client.on_connect = self._handle_connect
        self._session_present = False
        self._keepalive = keepalive
        self._suback: dict[int, asyncio.Future[tuple[int, ...]]] = {}
        self.lost = asyncio.Event()
        self.lost.set()
        self.endpoint: Endpoint | None = None

    @property
    def connected(self) -> bool:
        """Whether the link is up (CONNACK received, not lost since)."""
        return not self.lost.is_set()

    def _handle_message(
        self, _client: object, topic: str, payload: bytes, _qos: int, properties: Mapping[str, Any]
    ) -> None:
        try:
            self._on_message_cb(topic, payload, properties)
        except Exception:
            # A bug in the owner's handler must not kill gmqtt's read loop.
            self._logger.exception("amora-sync: message handler failed for %s", topic)

    def _handle_connect(self, _client: object, flags: int, _rc: int, _properties: object) -> None:
        self._session_present = bool(flags)

    def _handle_disconnect(self, _client: object, _packet: object, *_exc: object) -> None:
        if not self.lost.is_set():
            self._logger.info("amora-sync: connection to %s lost", self.endpoint)
        self.lost.set()
        for fut in self._suback.values():
            if not fut.done():
                fut.set_exception(LinkError("connection lost before SUBACK"))
        self._suback.clear()

    def _handle_suback(self, _client: object, mid: int, granted: tuple[int, ...], _properties: object) -> None:
        fut = self._suback.pop(mid, None)
        if fut is not None and not fut.done():
            fut.set_result(tuple(granted))

    async def connect(self, endpoint: Endpoint, *, ssl_context: ssl.SSLContext, limit: float) -> bool:
        """Connect to `endpoint`; return whether the broker still had our session.

        Raises:
            LinkError: The connection failed or was refused.
        """
        self.endpoint = endpoint
        self._session_present = False
        try:
            async with asyncio.timeout(limit):
                await self._client.connect(
                    endpoint.host,
                    endpoint.port,
                    ssl=ssl_context,
                    keepalive=self._keepalive,
                )
        except MQTTConnectError as exc:
            await self._abort()
            code = getattr(exc, "_code", None)
            raise LinkError(f"broker {endpoint} refused the connection: {exc}", reason_code=code) from exc
        except (OSError, TimeoutError) as exc:
            await self._abort()
            raise LinkError(f"cannot connect to {endpoint}: {exc!r}") from exc
        self.lost.clear()
        if not self._client.is_connected:
            self.lost.set()
            raise LinkError(f"connection to {endpoint} dropped during set-up")
        return self._session_present

    async def _abort(self) -> None:
        self.lost.set()
        try:
            await self._client.disconnect()
        except Exception:  # noqa: BLE001 - tearing down a failed attempt: nothing to report
            self._logger.debug("amora-sync: ignored error closing a failed attempt")

    async def subscribe(self, topics: list[str], *, qos: int, limit: float) -> tuple[int, ...]:
        """Subscribe to `topics` in one SUBSCRIBE; return the granted codes.

        Raises:
            LinkError: The SUBACK did not arrive in time or the link dropped.
        """
        subs = [gmqtt.Subscription(topic, qos=qos) for topic in topics]
        # gmqtt appends every subscription to its list and never uses the list
        # to resubscribe (we do that), so keep it from growing per reconnect.
        self._client.subscriptions = []
        fut: asyncio.Future[tuple[int, ...]] = asyncio.get_running_loop().create_future()
        try:
            mid = self._client.subscribe(subs)
        except OverflowError as exc:  # every packet id is in flight
            raise LinkError("no packet id free for SUBSCRIBE") from exc
        self._suback[mid] = fut
        try:
            async with asyncio.timeout(limit):
                return await fut
        except TimeoutError as exc:
            self._suback.pop(mid, None)
            raise LinkError("no SUBACK in time") from exc

    def publish(self, topic: str, payload: bytes, *, qos: int, **properties: object) -> bool:
        """Publish (QoS 1/2 are kept by gmqtt until acknowledged, across reconnects).

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
        storage = self._client._persistent_storage  # noqa: SLF001
        drained = asyncio.ensure_future(storage.wait_empty())
        lost = asyncio.ensure_future(self.lost.wait())
        try:
            await asyncio.wait({drained, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (drained, lost):
                task.cancel()

    async def close(self, *, end_session: bool = False) -> None:
        """Disconnect cleanly.

        Args:
            end_session: Also tell the broker to drop our session now (MQTT 5
                DISCONNECT with session expiry 0) instead of keeping it until it expires.
        """
        self.lost.set()
        properties = {"session_expiry_interval": 0} if end_session else {}
        try:
            async with asyncio.timeout(2):
                await self._client.disconnect(**properties)
        except Exception:  # noqa: BLE001 - closing: nothing useful to report
            self._logger.debug("amora-sync: ignored error while disconnecting")

    def force_drop(self) -> None:
        """Close the socket without a DISCONNECT (used when credentials changed)."""
        self.lost.set()
        conn = self._client._connection  # noqa: SLF001
        if conn is not None:
            conn._transport.close()  # noqa: SLF001
