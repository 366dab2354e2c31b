"""The session's life: resume or exchange, refresh before expiry, a new exchange when refused.

The keeper holds this client's keys (they never leave it but to the app's own session
store), the current `Session` and the `Sender` that signs commands under it. Whoever needs
to react to a new or refreshed session (the connection, the subscriptions, the cache) gets
the old and new session through the `on_change` hook.

With a `SessionStore`, every adopted session is stored, and the next run resumes it: it
connects with the stored broker credential at once (a restart writes nothing to the
broker) and refreshes it in the background, at a random moment of its first
`RESUME_REFRESH_SPREAD_S` seconds so a fleet restarting together does not refresh together.
A stored session the broker or the service no longer knows (logged out, revoked, expired)
is refused; the keeper says why and exchanges the token for a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
from typing import TYPE_CHECKING, Final

from amora_protocol import EncryptionKey, Sender, SigningKey, now_ms
from amora_sync._errors import AuthzUnavailableError, ClientClosedError, RateLimitedError, SessionError
from amora_sync._flow import LatestPerKeyQueue, QueueClosedError, ReconnectPolicy
from amora_sync._session import decode_session, refresh_delay
from amora_sync._session_store import (
    RecordError,
    StoredSession,
    check_grant_matches,
    decode_record,
    encode_record,
)

if TYPE_CHECKING:
    import logging
    from collections.abc import AsyncIterator, Callable

    from amora_sync._session import Session, SessionApi
    from amora_sync._session_store import SessionStore
    from amora_sync._stats import ClientStats

__all__ = ["RESUME_REFRESH_SPREAD_S", "SessionKeeper"]

_REFRESH_RETRY = ReconnectPolicy(initial_delay=1.0, max_delay=30.0)
RESUME_REFRESH_SPREAD_S: Final = 30.0
"""A resumed session is refreshed at a random moment within this many seconds."""
_RESUME_MARGIN_MS: Final = 30_000  # a stored session this close to its expiry is not worth resuming


class SessionKeeper:
    """Holds the keys and the current session; keeps the session alive."""

    def __init__(  # noqa: PLR0913 - every option is keyword-only
        self,
        *,
        client_name: str | None,
        refresh_margin: float,
        stats: ClientStats,
        logger: logging.Logger,
        store: SessionStore | None = None,
        authz_url: str = "",
    ) -> None:
        """Make this client's keys; nothing is exchanged until `resume` or `exchange`.

        Args:
            client_name: A name shown in the service's session list.
            refresh_margin: Refresh when this fraction of the session's life is left.
            stats: Counts exchanges and refreshes.
            logger: Where to log.
            store: Where the session is kept between runs (None: nowhere).
            authz_url: The service's URL (a stored session from another is not resumed).
        """
        self._store = store
        self._authz_url = authz_url.rstrip("/")
        self.resumed = False
        """Whether the current session was resumed from the store (until the next exchange)."""
        self._resume_unconfirmed = False
        self.resume_error: str | None = None
        """Why the last stored session could not be resumed, if it could not."""
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
        session, body = await self._require_api().create_with_body(
            self.signing_key, self.encryption_key, client_name=self._client_name
        )
        self._stats.session_exchanges += 1
        self.resumed = self._resume_unconfirmed = False
        self._adopt(session, body)

    async def resume(self) -> bool:
        """Adopt the stored session when it is usable; return whether one was adopted.

        Nothing is sent: the broker is the judge of the stored credential (`resume_refused`
        when it refuses it). A record that cannot be used is forgotten and the reason kept
        in `resume_error`.

        Raises:
            SessionError: The token provider failed (the exchange would fail the same way).
        """
        if self._store is None:
            return False
        try:
            data = self._store.load()
        except OSError as exc:
            self._resume_failed(f"the stored session cannot be read: {exc}", forget=False)
            return False
        if data is None:
            return False
        subject = await self._require_api().token_subject()
        try:
            stored, session = self._check(data, subject)
        except RecordError as exc:
            self._resume_failed(f"the stored session cannot be resumed: {exc}")
            return False
        self.signing_key, self.encryption_key = stored.signing_key, stored.encryption_key
        self._sender = None
        self.resumed = self._resume_unconfirmed = True
        self._stats.session_resumes += 1
        self._log.info("amora-sync: resuming the stored session %s", session.session_id[:12])
        self._adopt(session, None)
        return True

    def _check(self, data: bytes, subject: str | None) -> tuple[StoredSession, Session]:
        stored = decode_record(data)
        if stored.authz_url != self._authz_url:
            msg = f"it was issued by {stored.authz_url}, not by {self._authz_url}"
            raise RecordError(msg)
        try:
            session = decode_session(stored.session_body)
        except SessionError as exc:
            raise RecordError(str(exc)) from exc
        if session.expires_at_ms <= now_ms() + _RESUME_MARGIN_MS:
            msg = "it has expired"
            raise RecordError(msg)
        if subject is None:
            msg = "the current token is not a JWT whose user (sub) can be read, so whose session it is is unknown"
            raise RecordError(msg)
        check_grant_matches(
            session.grant,
            authz_keys={k.kid: k for k in session.authz_keys},
            session_id=session.session_id,
            signing_key=stored.signing_key,
            subject=subject,
        )
        return stored, session

    def _resume_failed(self, reason: str, *, forget: bool = True) -> None:
        self.resume_error = reason
        self._stats.session_resume_failures += 1
        self._log.warning("amora-sync: %s; logging in afresh", reason)
        if forget and self._store is not None:
            try:
                self._store.clear()
            except OSError as exc:
                self._log.warning("amora-sync: cannot delete the stored session: %s", exc)

    @property
    def has_store(self) -> bool:
        """Whether sessions are kept between runs."""
        return self._store is not None

    @property
    def resume_unconfirmed(self) -> bool:
        """A resumed session whose credential no broker accepted yet."""
        return self._resume_unconfirmed

    def resume_confirmed(self) -> None:
        """A broker accepted the resumed credential."""
        self._resume_unconfirmed = False

    def resume_refused(self) -> None:
        """A broker refused the resumed credential: it was logged out, revoked or expired."""
        self._resume_unconfirmed = False
        self._resume_failed(
            "the broker refused the stored session's credential (the session was logged out, revoked or has expired)"
        )

    def forget(self) -> None:
        """Delete the stored session (after a logout)."""
        if self._store is not None:
            try:
                self._store.clear()
            except OSError as exc:
                self._log.warning("amora-sync: cannot delete the stored session: %s", exc)

    def refresh_soon(self) -> None:
        """Refresh now rather than at the due time (after a reconnect: access may have changed)."""
        self._refresh_soon.set()

    async def run(self) -> None:
        """Refresh the session before it expires; exchange again when it is gone. Runs forever."""
        api = self._require_api()
        backoff = _REFRESH_RETRY.backoff()
        # A resumed session's grant and device list are as old as the record: refresh soon,
        # but not all at once when a whole fleet restarted together.
        first = random.uniform(0, RESUME_REFRESH_SPREAD_S) if self.resumed else None  # noqa: S311 - jitter
        while True:
            session = self.require()
            # Due time, or earlier after a reconnect: the broker also kicks clients when
            # their access changes, and a refresh brings the current device list.
            due = refresh_delay(session, now_ms=now_ms(), margin=self._refresh_margin)
            if first is not None:
                due, first = min(due, first), None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(due):
                    await self._refresh_soon.wait()
            self._refresh_soon.clear()
            try:
                try:
                    fresh, body = await api.refresh_with_body(session)
                    self._stats.session_refreshes += 1
                except AuthzUnavailableError:
                    raise
                except SessionError as exc:
                    # The session is gone (expired, deleted): start a new one.
                    self._log.info("amora-sync: session refresh refused (%s); exchanging again", exc)
                    fresh, body = await api.create_with_body(
                        self.signing_key, self.encryption_key, client_name=self._client_name
                    )
                    self._stats.session_exchanges += 1
                    self.resumed = self._resume_unconfirmed = False
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
            self._adopt(fresh, body)

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

    def _adopt(self, session: Session, body: bytes | None) -> None:
        old = self.session
        self.session = session
        if body is not None and self._store is not None:
            record = StoredSession(
                authz_url=self._authz_url,
                signing_key=self.signing_key,
                encryption_key=self.encryption_key,
                session_body=body,
            )
            try:
                self._store.save(encode_record(record))
            except OSError as exc:
                # The session works without it; only the next start logs in afresh.
                self._log.warning("amora-sync: cannot store the session: %s", exc)
        if old is None or old.session_id != session.session_id or self._sender is None:
            self._sender = Sender(
                sender_id=session.session_id,
                signing_key=self.signing_key,
                epoch=secrets.randbits(63),
            )
        self.on_change(old, session)
        for queue in list(self._watchers):
            queue.put(0, session)
