"""The session's life: the token exchange, refresh before expiry, a new exchange when refused.

The keeper holds this client's keys (they never leave it), the current `Session` and the
`Sender` that signs commands under it. Whoever needs to react to a new or refreshed
session (the connection, the subscriptions, the cache) gets the old and new session
through the `on_change` hook.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from typing import TYPE_CHECKING

from amora_protocol import EncryptionKey, Sender, SigningKey, now_ms
from amora_sync._errors import AuthzUnavailableError, ClientClosedError, RateLimitedError, SessionError
from amora_sync._flow import LatestPerKeyQueue, QueueClosedError, ReconnectPolicy
from amora_sync._session import refresh_delay

if TYPE_CHECKING:
    import logging
    from collections.abc import AsyncIterator, Callable

    from amora_sync._session import Session, SessionApi
    from amora_sync._stats import ClientStats

__all__ = ["SessionKeeper"]

_REFRESH_RETRY = ReconnectPolicy(initial_delay=1.0, max_delay=30.0)


class SessionKeeper:
    """Holds the keys and the current session; keeps the session alive."""

    def __init__(
        self,
        *,
        client_name: str | None,
        refresh_margin: float,
        stats: ClientStats,
        logger: logging.Logger,
    ) -> None:
        """Make this client's keys; nothing is exchanged until `exchange`.

        Args:
            client_name: A name shown in the service's session list.
            refresh_margin: Refresh when this fraction of the session's life is left.
            stats: Counts exchanges and refreshes.
            logger: Where to log.
        """
        self._client_name = client_name
        self._refresh_margin = refresh_margin
        self._stats = stats
        self._log = logger
        self.signing_key = SigningKey.generate()
        self.encryption_key = EncryptionKey.generate()
        self.session: Session | None = None
        self._sender: Sender | None = None
        self._api: SessionApi | None = None
        self._refresh_soon = asyncio.Event()
        self._watchers: set[LatestPerKeyQueue[int, Session]] = set()
        self.on_change: Callable[[Session | None, Session], None] = lambda _old, _new: None
        """Called after every adopted session with the previous one (None at first)."""

    def bind(self, api: SessionApi) -> None:
        """Use `api` for the exchanges and refreshes."""
        self._api = api

    def require(self) -> Session:
        """Return the current session.

        Raises:
            ClientClosedError: No session yet.
        """
        if self.session is None:
            raise ClientClosedError("the client is not open")
        return self.session

    def sender(self) -> Sender:
        """Return the signer of this session's commands.

        Raises:
            ClientClosedError: No session yet.
        """
        if self._sender is None:
            raise ClientClosedError("the client is not open")
        return self._sender

    @property
    def short_id(self) -> str:
        """The session id's first characters (for task names and logs), ``-`` before one."""
        return "-" if self.session is None else self.session.session_id[:12]

    async def exchange(self) -> None:
        """Exchange the user's token for a new session and adopt it.

        Raises:
            SessionError: The service refused or failed (subclasses say which).
        """
        session = await self._require_api().create(self.signing_key, self.encryption_key, client_name=self._client_name)
        self._stats.session_exchanges += 1
        self._adopt(session)

    def refresh_soon(self) -> None:
        """Refresh now rather than at the due time (after a reconnect: access may have changed)."""
        self._refresh_soon.set()

    async def run(self) -> None:
        """Refresh the session before it expires; exchange again when it is gone. Runs forever."""
        api = self._require_api()
        backoff = _REFRESH_RETRY.backoff()
        while True:
            session = self.require()
            # Due time, or earlier after a reconnect: the broker also kicks clients when
            # their access changes, and a refresh brings the current device list.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(refresh_delay(session, now_ms=now_ms(), margin=self._refresh_margin)):
                    await self._refresh_soon.wait()
            self._refresh_soon.clear()
            try:
                try:
                    fresh = await api.refresh(session)
                    self._stats.session_refreshes += 1
                except AuthzUnavailableError:
                    raise
                except SessionError as exc:
                    # The session is gone (expired, deleted): start a new one.
                    self._log.info("amora-sync: session refresh refused (%s); exchanging again", exc)
                    fresh = await api.create(self.signing_key, self.encryption_key, client_name=self._client_name)
                    self._stats.session_exchanges += 1
            except SessionError as exc:
                # The live connection is unaffected; retry a little later (no sooner than
                # a rate-limiting service asked).
                self._log.warning("amora-sync: session refresh failed: %s", exc)
                delay = max(0.5, backoff.next_delay())
                if isinstance(exc, RateLimitedError) and exc.retry_after is not None:
                    delay = max(delay, exc.retry_after)
                await asyncio.sleep(delay)
                continue
            backoff.reset()
            self._adopt(fresh)

    async def changes(self) -> AsyncIterator[Session]:
        """Yield the current session now and after every refresh or new exchange."""
        queue: LatestPerKeyQueue[int, Session] = LatestPerKeyQueue(max_keys=1)
        queue.put(0, self.require())
        self._watchers.add(queue)
        try:
            while True:
                try:
                    yield await queue.get()
                except QueueClosedError:
                    return
        finally:
            self._watchers.discard(queue)

    def close(self) -> None:
        """End every `changes` iterator."""
        for queue in list(self._watchers):
            queue.close()

    def authz_clock_offset(self) -> int | None:
        """The authz service's clock minus ours in ms (from its HTTP ``Date``), if known."""
        return None if self._api is None else self._api.clock_offset_ms

    @property
    def api(self) -> SessionApi | None:
        """The session endpoints in use, None before `bind`."""
        return self._api

    def _require_api(self) -> SessionApi:
        if self._api is None:
            raise ClientClosedError("the client is not open")
        return self._api

    def _adopt(self, session: Session) -> None:
        old = self.session
        self.session = session
        if old is None or old.session_id != session.session_id or self._sender is None:
            self._sender = Sender(
                sender_id=session.session_id,
                signing_key=self.signing_key,
                epoch=secrets.randbits(63),
            )
        self.on_change(old, session)
        for queue in list(self._watchers):
            queue.put(0, session)
