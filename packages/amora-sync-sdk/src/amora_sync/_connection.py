"""The connection and failover loop: one broker link at a time, kept up across the endpoints.

The loop walks the session's endpoints in order (starting with the last one that worked),
backs off with full jitter after a full round of failures, and after each connect hands
the link to its owner through two hooks: ``prepare`` (subscribe; may fail the attempt) and
``ready`` (the link is live: flush the outbox). It reports every change as a
`ConnectionInfo`, observable synchronously and as a stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

from amora_sync._flow import Backoff, LatestPerKeyQueue, QueueClosedError
from amora_sync._mqtt import LinkError, MqttLink

if TYPE_CHECKING:
    import logging
    import ssl
    from collections.abc import AsyncIterator, Awaitable, Callable

    from amora_sync._flow import ReconnectPolicy
    from amora_sync._mqtt import MessageHandler
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
        on_message: MessageHandler,
        stats: ClientStats,
        logger: logging.Logger,
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
        """
        self._session = session
        self._policy = policy
        self._tls = tls
        self._session_expiry = session_expiry
        self._keepalive = keepalive
        self._on_message = on_message
        self._stats = stats
        self._log = logger
        self.prepare: Callable[[MqttLink, bool], Awaitable[None]] = _nothing_to_prepare
        """Run after CONNACK, before the link counts as connected (subscribe); may raise LinkError."""
        self.ready: Callable[[MqttLink, bool], None] = lambda _link, _present: None
        """Run once the link counts as connected (flush the outbox)."""
        self.lost: Callable[[], None] = lambda: None
        """Run when the link is gone."""
        self.credential_refused: Callable[[], Awaitable[None]] = _nothing_to_prepare_noargs
        """Run when a broker refused the credential (exchange the token again)."""
        self.link: MqttLink | None = None
        self.connected = asyncio.Event()
        self.info = ConnectionInfo(state=ConnectionState.CLOSED)
        self.attempts = 0
        self.last_error: str | None = None
        self._new_credentials = asyncio.Event()
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
        """The session's broker credential changed: drop the link and reconnect with the new one."""
        self._new_credentials.set()
        if self.link is not None:
            self.link.abort()

    # ------------------------------------------------------------------ the loop

    async def run(self) -> None:
        """Connect, serve until lost, back off, fail over; forever (cancel to stop)."""
        self._closing = False
        backoff = Backoff(policy=self._policy)
        start = 0
        while True:
            session = self._session()
            self._new_credentials.clear()
            if self.link is None or self.link.client_id != session.broker.client_id:
                if self.link is not None:
                    await self.link.close()
                self.link = self._new_link(session)
            link = self.link
            endpoints = session.broker.endpoints
            for offset in range(len(endpoints)):
                index = (start + offset) % len(endpoints)
                endpoint = endpoints[index]
                if await self._attempt(link, endpoint):
                    start = index  # come back here first next time
                    backoff.reset()
                    await self._serve(link, endpoint)
                    break
                if self._new_credentials.is_set():
                    break
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

    def _new_link(self, session: Session) -> MqttLink:
        creds = session.broker
        return MqttLink(
            client_id=creds.client_id,
            username=creds.username,
            password=creds.password,
            session_expiry=self._session_expiry,
            keepalive=self._keepalive,
            on_message=self._on_message,
            logger=self._log,
        )

    async def _attempt(self, link: MqttLink, endpoint: Endpoint) -> bool:
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

    async def _serve(self, link: MqttLink, endpoint: Endpoint) -> None:
        self._log.info("amora-sync: connected to %s", endpoint)
        await link.lost.wait()
        self.connected.clear()
        self.lost()
        if not self._closing:
            self.set_state(ConnectionInfo(state=ConnectionState.RECONNECTING, endpoint=endpoint))


async def _nothing_to_prepare(_link: MqttLink, _present: bool) -> None:  # noqa: FBT001
    return


async def _nothing_to_prepare_noargs() -> None:
    return
