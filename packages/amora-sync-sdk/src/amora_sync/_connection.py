"""The connection and failover loop: one broker link at a time, kept up across the endpoints.

The loop walks the session's endpoints in order (starting with the last one that worked;
those of the client's transport, `_session.select_endpoints`),
backs off with full jitter after a full round of failures, and after each connect hands
the link to its owner through two hooks: ``prepare`` (subscribe; may fail the attempt) and
``ready`` (the link is live: flush the outbox). Each endpoint's scheme picks the adapter
(`_mqtt.MqttLink` for ``mqtts``, `_websocket.WebSocketLink` for ``wss``), both behind
`_link.Link`. It reports every change as a `ConnectionInfo`, observable synchronously and as
a stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

from amora_sync._flow import LatestPerKeyQueue, QueueClosedError
from amora_sync._link import LinkError
from amora_sync._mqtt import MqttLink
from amora_sync._session import select_endpoints
from amora_sync._websocket import WebSocketLink

if TYPE_CHECKING:
    import logging
    import ssl
    from collections.abc import AsyncIterator, Awaitable, Callable

    from amora_sync._flow import ReconnectPolicy
    from amora_sync._link import AckingHandler, Link, MessageHandler
    from amora_sync._session import Endpoint, Session
    from amora_sync._stats import ClientStats

__all__ = ["ConnectionInfo", "ConnectionLoop", "ConnectionState"]


class ConnectionState(enum.Enum):
    """Where the client's broker connection stands."""

    CONNECTING = "connecting"
    """First connection attempt under way."""
    CONNECTED = "connected"
    """Connected, subscribed and resynced."""
    RECONNECTING = "reconnecting"
    """The connection was lost; backing off and retrying (possibly another endpoint)."""
    CLOSED = "closed"
    """The client is closed."""


@dataclass(frozen=True, kw_only=True)
class ConnectionInfo:
    """A change of the connection state.

    Attributes:
        state: The new state.
        endpoint: The endpoint in use (when connected) or last tried.
        error: Why the last attempt or connection failed, if it did.
    """

    state: ConnectionState
    endpoint: Endpoint | None = None
    error: str | None = None


class ConnectionLoop:
    """Keeps one link to one of the session's brokers."""

    def __init__(  # noqa: PLR0913 - keyword-only wiring
        self,
        *,
        session: Callable[[], Session],
        policy: ReconnectPolicy,
        tls: Callable[[], ssl.SSLContext],
        session_expiry: int,
        keepalive: int,
        on_message: MessageHandler | AckingHandler,
        stats: ClientStats,
        logger: logging.Logger,
        will: tuple[str, bytes, int] | None = None,
        transport: str = "auto",
    ) -> None:
        """Wire the loop.

        Args:
            session: Returns the current session (endpoints and credential).
            policy: Backoff and the bound on one attempt.
            tls: Returns the TLS context for the brokers.
            session_expiry: Broker session expiry interval in seconds.
            keepalive: MQTT keepalive in seconds.
            on_message: Gets every message the link receives.
            stats: Counts connects.
            logger: Where to log.
            will: The link's Last Will (topic, payload, will delay in seconds), if any.
            transport: Which of the session's endpoints to use (`select_endpoints`).
        """
        self._will = will
        self._session = session
        self._policy = policy
        self._tls = tls
        self._session_expiry = session_expiry
        self._keepalive = keepalive
        self._on_message = on_message
        self._stats = stats
        self._log = logger
        self._transport = transport
        self.prepare: Callable[[Link, bool], Awaitable[None]] = _nothing_to_prepare
        """Run after CONNACK, before the link counts as connected (subscribe); may raise LinkError."""
        self.ready: Callable[[Link, bool], None] = lambda _link, _present: None
        """Run once the link counts as connected (flush the outbox)."""
        self.lost: Callable[[], None] = lambda: None
        """Run when the link is gone."""
        self.credential_refused: Callable[[], Awaitable[None]] = _nothing_to_prepare_noargs
        """Run when a broker refused the credential (exchange the token again)."""
        self.link: Link | None = None
        self.connected = asyncio.Event()
        self.info = ConnectionInfo(state=ConnectionState.CLOSED)
        self.attempts = 0
        self.last_error: str | None = None
        self._untrusted_in_pass = 0
        self.untrusted = asyncio.Event()
        """Set when every endpoint of a pass failed certificate verification: waiting cannot help."""
        self._new_credentials = asyncio.Event()
        self._rng = random.Random()  # noqa: S311 - jitter, not security
        self._closing = False
        self._watchers: set[LatestPerKeyQueue[int, ConnectionInfo]] = set()

    # ------------------------------------------------------------------ state

    def set_state(self, info: ConnectionInfo) -> None:
        """Record and announce a state change."""
        self.info = info
        for queue in list(self._watchers):
            queue.put(0, info)
            if info.state is ConnectionState.CLOSED:
                queue.close()

    async def changes(self) -> AsyncIterator[ConnectionInfo]:
        """Yield the state now and on every change (latest only when slow); ends at CLOSED."""
        queue: LatestPerKeyQueue[int, ConnectionInfo] = LatestPerKeyQueue(max_keys=1)
        queue.put(0, self.info)
        self._watchers.add(queue)
        try:
            while True:
                try:
                    info = await queue.get()
                except QueueClosedError:
                    return
                yield info
                if info.state is ConnectionState.CLOSED:
                    return
        finally:
            self._watchers.discard(queue)

    def credentials_changed(self) -> None:
        """The session's broker account changed (a new exchange): drop the link and reconnect with it.

        A new password alone (a refresh in token mode) does not come here: the broker checks
        the credential at CONNECT only, so the live link stays and the next CONNECT uses it.
        """
        self._new_credentials.set()
        if self.link is not None:
            self.link.abort()

    # ------------------------------------------------------------------ the loop

    async def run(self) -> None:
        """Connect, serve until lost, back off, fail over; forever (cancel to stop)."""
        self._closing = False
        backoff = self._policy.backoff()
        start = 0
        while True:
            session = self._session()
            self._new_credentials.clear()
            endpoints = select_endpoints(session.broker.endpoints, self._transport)
            if not endpoints:
                self.last_error = f"the session lists no endpoint for transport {self._transport!r}"
            self._untrusted_in_pass = 0
            for offset in range(len(endpoints)):
                index = (start + offset) % len(endpoints)
                endpoint = endpoints[index]
                # The session as it is now: a refresh during this pass may have brought a
                # new password (token mode), which the older one may no longer match.
                link = await self._link_for(self._session(), endpoint)
                if await self._attempt(link, endpoint):
                    backoff.reset()
                    # Come back here first next time, unless the broker hung (try the
                    # next one first: a hung broker eats a whole connect timeout) or a
                    # more preferred one is healthy again (fail back to it).
                    start = await self._serve(link, endpoints, index)
                    break
                if self._new_credentials.is_set():
                    break
            if endpoints and self._untrusted_in_pass == len(endpoints):
                self.untrusted.set()
            delay = backoff.next_delay()
            self._log.debug("amora-sync: next connection attempt in %.3f s", delay)
            # Strategy: a jittered pause (not a wait for an event) is the point of
            # backoff; an exchange of credentials cuts it short.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._new_credentials.wait()

    async def close(self, *, end_session: bool) -> None:
        """Disconnect (never blocks for long) and mark the loop closed."""
        self._closing = True
        self.connected.clear()
        if self.link is not None:
            await self.link.close(end_session=end_session)
            self.link = None

    async def _link_for(self, session: Session, endpoint: Endpoint) -> Link:
        """The link for `endpoint`: the current one if its client id and transport fit.

        A kept link takes the session's current user name and password for its next
        CONNECT: a refresh in token mode hands out a new password (a token with the new
        expiry) for the same client id, and the old one stops working when it expires.
        """
        kind = WebSocketLink if endpoint.transport == "wss" else MqttLink
        creds = session.broker
        link = self.link
        if link is not None and link.client_id == creds.client_id and type(link) is kind:
            link.use_credential(username=creds.username, password=creds.password)
            return link
        if link is not None:
            await link.close()
        self.link = kind(
            client_id=creds.client_id,
            username=creds.username,
            password=creds.password,
            session_expiry=self._session_expiry,
            keepalive=self._keepalive,
            on_message=self._on_message,
            logger=self._log,
            will=self._will,
        )
        return self.link

    async def _attempt(self, link: Link, endpoint: Endpoint) -> bool:
        self.attempts += 1
        try:
            present = await link.connect(endpoint, ssl_context=self._tls(), limit=self._policy.connect_timeout)
            await self.prepare(link, present)
        except LinkError as exc:
            self.last_error = str(exc)
            self._log.info("amora-sync: %s", exc)
            if link.connected:
                await link.close()
            if exc.credential_refused:
                await self.credential_refused()
            if exc.untrusted:
                self._untrusted_in_pass += 1
            return False
        except OSError as exc:  # TLS context problems surface here
            self.last_error = repr(exc)
            self._log.warning("amora-sync: cannot connect to %s: %r", endpoint, exc)
            return False
        self._stats.connects += 1
        self.last_error = None
        self.connected.set()
        self.set_state(ConnectionInfo(state=ConnectionState.CONNECTED, endpoint=endpoint))
        self.ready(link, present)
        return True

    async def _serve(self, link: Link, endpoints: tuple[Endpoint, ...], index: int) -> int:
        """Hold the link until it is lost; return the index of the endpoint to try first next."""
        endpoint = endpoints[index]
        self._log.info("amora-sync: connected to %s", endpoint)
        why = _WhyLeft()
        async with asyncio.TaskGroup() as tg:
            liveness = tg.create_task(self._watch_liveness(link, why), name="amora-sync.liveness")
            failback = None
            if index > 0 and self._policy.failback_interval > 0:
                failback = tg.create_task(self._fail_back(link, endpoints[:index], why), name="amora-sync.failback")
            await link.lost.wait()
            liveness.cancel()
            if failback is not None and why.move_to is None:
                failback.cancel()  # else let it finish closing the link cleanly
        after = index
        if why.hung:
            after = (index + 1) % len(endpoints)  # a hung broker eats a connect timeout: next first
        elif why.move_to is not None:
            after = why.move_to
        self.connected.clear()
        self.lost()
        if not self._closing:
            self.set_state(ConnectionInfo(state=ConnectionState.RECONNECTING, endpoint=endpoint, error=self.last_error))
        return after

    async def _watch_liveness(self, link: Link, why: _WhyLeft) -> None:
        """Probe the broker whenever it has been silent; drop the link if it stops answering."""
        interval, limit = self._policy.liveness_interval, self._policy.liveness_timeout
        loop = asyncio.get_running_loop()
        while link.connected:
            silent = loop.time() - link.last_inbound
            if silent < interval:
                # Strategy: sleep until the silence would reach the interval (a timer, not
                # a poll): traffic in between proves the broker alive and resets it. A plain
                # sleep, not a timeout around `link.lost.wait()`: `_serve` cancels this task when
                # the link is lost, and a sleep leaves the collector a future and a timer per
                # wake instead of a timeout, a coroutine and an event waiter (a process holding
                # thousands of clients wakes thousands of these a second).
                await asyncio.sleep(interval - silent)
                continue
            if await link.probe(limit=limit) or not link.connected:
                continue
            self.last_error = f"broker {link.endpoint} did not answer within {limit} s (hung)"
            self._log.warning("amora-sync: %s; leaving it", self.last_error)
            why.hung = True
            link.abort()
            return

    async def _fail_back(self, link: Link, preferred: tuple[Endpoint, ...], why: _WhyLeft) -> None:
        """While on a less preferred endpoint, move back once a preferred one is healthy."""
        while link.connected:
            # Jitter: clients that failed over together do not all come back at once.
            wait = self._policy.failback_interval * (0.5 + self._rng.random())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await link.lost.wait()
            if link.lost.is_set():
                return
            for index, endpoint in enumerate(preferred):
                if await self._accepts_tls(endpoint) and not link.lost.is_set():
                    self._log.info("amora-sync: %s is healthy again; moving back to it", endpoint)
                    why.move_to = index
                    await link.close()
                    return

    async def _accepts_tls(self, endpoint: Endpoint) -> bool:
        """Whether `endpoint` completes a TLS handshake in time (a hung broker does not)."""
        try:
            async with asyncio.timeout(self._policy.liveness_timeout):
                _reader, writer = await asyncio.open_connection(
                    endpoint.host, endpoint.port, ssl=self._tls(), server_hostname=endpoint.host
                )
        except (OSError, TimeoutError):
            return False
        writer.transport.abort()  # no MQTT on it: a CONNECT with our id would take our session
        return True


@dataclass(kw_only=True)
class _WhyLeft:
    """Why a link was left, when the loop left it on purpose."""

    hung: bool = False  # the broker stopped answering
    move_to: int | None = None  # a more preferred endpoint is healthy again


async def _nothing_to_prepare(_link: Link, _present: bool) -> None:  # noqa: FBT001
    return


async def _nothing_to_prepare_noargs() -> None:
    return
