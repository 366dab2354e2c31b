"""What the rest of the SDK needs from one broker link, whatever carries it.

Two adapters implement `Link`: `_mqtt.MqttLink` (gmqtt, MQTT over TLS, ``mqtts://``) and
`_websocket.WebSocketLink` (paho-mqtt, MQTT over TLS websockets, ``wss://``). The connection
loop, the outbox and the subscriber talk to a `Link` only, so failover, resends,
subscriptions, QoS and the MQTT 5 properties behave the same on both
(docs/decisions/0012-websocket-transport-paho.md).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import ssl

    from amora_sync._session import Endpoint

__all__ = [
    "CLOSE_LIMIT",
    "CREDENTIAL_REFUSED",
    "PROBE_TOPIC",
    "AckingHandler",
    "Answers",
    "Link",
    "LinkError",
    "MessageHandler",
    "quiet_by_default",
    "untrusted_error",
    "wait_either",
]

MessageHandler = Callable[[str, bytes, Mapping[str, Any]], None]
"""Gets each message: topic, payload, and its MQTT 5 properties in gmqtt's shape (a list of
values per property name: ``{"content_type": ["application/vnd.amora+msgpack"]}``)."""
AckingHandler = Callable[[str, bytes, Mapping[str, Any]], Awaitable[None]]
"""An asynchronous handler: a QoS 1 message is acknowledged (PUBACK) only once it returns
(mqtts only: `_mqtt.MqttLink`)."""

# CONNACK reason codes that mean "this credential will not do" (MQTT 5 §3.2.2.2),
# plus the MQTT 3.1.1 equivalents: the SDK then exchanges the token again.
CREDENTIAL_REFUSED = frozenset({4, 5, 133, 134, 135, 138})

CLOSE_LIMIT = 1.0  # seconds a clean DISCONNECT may take before the socket is cut

# The liveness probe unsubscribes from a topic nobody subscribes to: the broker answers every
# UNSUBSCRIBE (success, "no subscription existed" or "not authorized" alike) from its own
# loop, so an answer proves the broker is working, and nothing changes.
PROBE_TOPIC = "amora-sdk/liveness-probe"


class LinkError(Exception):
    """Internal: a connection attempt or subscription failed (translated by the owner).

    Attributes:
        reason_code: The CONNACK/SUBACK reason code, when the broker sent one.
        untrusted: The broker's certificate failed verification (waiting cannot help).
    """

    def __init__(self, message: str, *, reason_code: int | None = None, untrusted: bool = False) -> None:
        """Build the error (`untrusted`: the broker's certificate failed verification)."""
        super().__init__(message)
        self.reason_code = reason_code
        self.untrusted = untrusted

    @property
    def credential_refused(self) -> bool:
        """Whether the broker refused the user name, password or client id."""
        return self.reason_code in CREDENTIAL_REFUSED


def untrusted_error(endpoint: Endpoint, exc: ssl.SSLCertVerificationError) -> LinkError:
    """The one message both transports give for a broker certificate that fails verification."""
    message = (
        f"the certificate of broker {endpoint} failed verification ({exc.verify_message}); "
        "check that ca_file is the CA that signed the broker's certificate"
    )
    return LinkError(message, untrusted=True)


def quiet_by_default(logger: logging.Logger) -> None:
    """Give `logger` the level WARNING unless the application has set one.

    The MQTT libraries log every connection and packet at INFO or DEBUG: noise for an
    application logging at INFO. A library must not configure logging (no handlers, no
    ``basicConfig``); it only picks a default level for loggers nobody configured, so an
    application that sets one (``logging.getLogger("gmqtt").setLevel(logging.DEBUG)``) wins.
    """
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.WARNING)


class Answers:
    """The broker's SUBACKs and UNSUBACKs awaited by packet id; all fail when the link drops."""

    def __init__(self) -> None:
        """No answer awaited yet."""
        self._suback: dict[int, asyncio.Future[tuple[int, ...]]] = {}
        self._unsuback: dict[int, asyncio.Future[None]] = {}

    def suback(self, mid: int, codes: tuple[int, ...]) -> None:
        """A SUBACK arrived with these reason codes."""
        waiter = self._suback.pop(mid, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(codes)

    def unsuback(self, mid: int) -> None:
        """An UNSUBACK arrived."""
        waiter = self._unsuback.pop(mid, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait_suback(self, mid: int, *, limit: float) -> tuple[int, ...]:
        """Wait for the SUBACK of `mid` (sent just now); return its reason codes.

        Raises:
            LinkError: It did not arrive within `limit` seconds, or the link dropped.
        """
        waiter: asyncio.Future[tuple[int, ...]] = asyncio.get_running_loop().create_future()
        self._suback[mid] = waiter
        try:
            async with asyncio.timeout(limit):
                return await waiter
        except TimeoutError as exc:
            self._suback.pop(mid, None)
            raise LinkError("no SUBACK in time") from exc

    async def answered(self, mid: int, *, limit: float) -> bool:
        """Whether the UNSUBACK of `mid` (sent just now) arrives within `limit` seconds."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._unsuback[mid] = waiter
        try:
            async with asyncio.timeout(limit):
                await waiter
        except TimeoutError:
            self._unsuback.pop(mid, None)
            return False
        except LinkError:
            return False
        return True

    def fail_all(self) -> None:
        """The link dropped: every waiter gets a `LinkError`."""
        for fut in self._suback.values():
            if not fut.done():
                fut.set_exception(LinkError("connection lost before SUBACK"))
        self._suback.clear()
        for waiter in self._unsuback.values():
            if not waiter.done():
                waiter.set_exception(LinkError("connection lost before UNSUBACK"))
        self._unsuback.clear()


async def wait_either(first: asyncio.Event, second: asyncio.Event) -> None:
    """Return once either event is set."""
    waits = {asyncio.ensure_future(first.wait()), asyncio.ensure_future(second.wait())}
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in waits:
            task.cancel()


class Link(Protocol):
    """One broker credential (one client id, one persistent session) over one transport."""

    client_id: str
    endpoint: Endpoint | None
    last_inbound: float
    """Loop time of the last packet seen from the broker."""
    lost: asyncio.Event
    """Set while the link is down."""

    @property
    def connected(self) -> bool:
        """Whether the link is up (CONNACK received, not lost since)."""
        ...

    def use_credential(self, *, username: str, password: str) -> None:
        """Send this user name and password at the next CONNECT (the live connection is unaffected)."""
        ...

    async def connect(self, endpoint: Endpoint, *, ssl_context: ssl.SSLContext, limit: float) -> bool:
        """Connect to `endpoint`; return whether the broker still had our session.

        Raises:
            LinkError: The connection failed or was refused.
        """
        ...

    async def subscribe(self, topics: list[str], *, qos: int, limit: float) -> tuple[int, ...]:
        """Subscribe to `topics` in one SUBSCRIBE; return the granted codes.

        Raises:
            LinkError: The SUBACK did not arrive in time or the link dropped.
        """
        ...

    async def probe(self, *, limit: float) -> bool:
        """Ask the broker for an answer (an UNSUBSCRIBE round trip); return whether it came."""
        ...

    def publish(self, topic: str, payload: bytes, *, qos: int, **properties: object) -> bool:
        """Publish with MQTT 5 properties (gmqtt's names); False when the receive window is full."""
        ...

    async def wait_inflight_drained(self) -> None:
        """Wait until every QoS 1/2 publish is acknowledged, or the link is lost."""
        ...

    async def close(self, *, end_session: bool = False) -> None:
        """Disconnect within about a second (a DISCONNECT if the broker takes it, else cut)."""
        ...

    def abort(self) -> None:
        """Cut the connection at once, without a DISCONNECT (never blocks)."""
        ...
