"""The client: one object that wires the session, the connection, the outbox and the cache.

Each job lives in its own module with a narrow interface; this one only connects them and
offers the public API:

- `_session_keeper.SessionKeeper`: keys, token exchange, refresh;
- `_connection.ConnectionLoop`: the broker link, failover and backoff (over `_mqtt`);
- `_subscriptions.Subscriber`: subscriptions and the resync after each connect;
- `_outbox.Outbox`: pending commands, publishing and resending, matching responses;
- `_inbound.InboundVerifier`: verification of everything that arrives;
- `_cache.DeviceCache`: the newest state and status per device, fanned out to `Watch`es.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Literal, Self

import httpx

from amora_protocol import Codec, InvalidDeviceId, now_ms, validate_device_id
from amora_sync._cache import DeviceCache, Watch
from amora_sync._connection import ConnectionInfo, ConnectionLoop, ConnectionState
from amora_sync._errors import ClientClosedError, ConnectError, InvalidDeviceIdError, SessionError, UnknownDeviceError
from amora_sync._flow import DEFAULT_CONNECT_TIMEOUT, ReconnectPolicy
from amora_sync._inbound import InboundVerifier
from amora_sync._outbox import Outbox
from amora_sync._session import SessionApi, select_endpoints
from amora_sync._session_keeper import SessionKeeper
from amora_sync._session_store import FileSessionStore, SessionStore
from amora_sync._stats import ClientStats
from amora_sync._subscriptions import Subscriber
from amora_sync._tasks import cancel_and_wait
from amora_sync._telemetry import CommandTracer

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from types import TracebackType

    from amora_protocol import Action, CommandResponse, ConnectionStatus, DeviceState
    from amora_sync._link import Link
    from amora_sync._session import DeviceInfo, Session, TokenProvider

__all__ = ["AmoraClient"]

_TRANSPORTS = ("auto", "mqtts", "wss")


class AmoraClient:
    """An Amora session: watch players and send them commands.

    ``async with AmoraClient(authz_url, token_provider) as client:`` exchanges
    the user's token for a session, connects over TLS to the first reachable
    broker endpoint, subscribes to the user's devices, and from then on keeps
    the connection (backoff with full jitter, failover, resubscribe, resync)
    and the session (refresh before expiry, exchange again when refused).
    """

    def __init__(  # noqa: PLR0913 - every option is keyword-only and defaulted
        self,
        authz_url: str,
        token_provider: TokenProvider,
        *,
        ca_file: str | os.PathLike[str] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        transport: Literal["auto", "mqtts", "wss"] = "auto",
        client_name: str | None = None,
        reconnect: ReconnectPolicy | None = None,
        connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
        session_expiry: int = 3600,
        keepalive: int = 30,
        refresh_margin: float = 0.2,
        max_pending_commands: int = 256,
        resend_interval: float = 3.0,
        max_watched_devices: int = 10_000,
        rate_limit_wait: float = 30.0,
        codec: Codec = Codec.MSGPACK,
        http_client: httpx.AsyncClient | None = None,
        logger: logging.Logger | None = None,
        session_store: SessionStore | str | os.PathLike[str] | None = None,
        tracer_provider: Any = None,  # noqa: ANN401 - opentelemetry's, an optional dependency
    ) -> None:
        """Configure the client; nothing happens until ``async with``.

        Args:
            authz_url: Base URL of the authz service.
            token_provider: Returns the user's current JWT (sync or async callable).
            ca_file: CA bundle to verify the broker and the authz service with.
            ssl_context: A ready TLS context for the broker (overrides `ca_file`).
            transport: Which of the session's broker endpoints to use: ``"mqtts"`` (MQTT
                over TLS, ports 8883/8884), ``"wss"`` (MQTT over TLS websockets, e.g. port
                443, for networks that pass only HTTPS), or ``"auto"`` (the default: the
                ``mqtts`` endpoints, or the ``wss`` ones when the session lists no other).
                Each endpoint's URL scheme picks the MQTT client: gmqtt for ``mqtts://``,
                paho-mqtt for ``wss://``.
            client_name: A name shown in the service's session list.
            reconnect: Backoff and attempt bounds.
            connect_timeout: How long entering waits for the first connection, in seconds
                (default `DEFAULT_CONNECT_TIMEOUT`, 15; None: do not wait, the client connects
                in the background).
            session_expiry: Broker session expiry interval in seconds (persistent session).
            keepalive: MQTT keepalive in seconds.
            refresh_margin: Refresh the session when this fraction of its life is left.
            max_pending_commands: Bound of the outbox (pending commands); more raise
                `OutboxFullError`.
            resend_interval: Seconds after which a command that got no answer at all is sent
                again with the same id, until its deadline (the device runs it once).
            max_watched_devices: Bound on the devices one watch queues for.
            rate_limit_wait: How long one session request (create or refresh) waits in all
                when the authz service answers 429 with ``Retry-After``, before
                `RateLimitedError`.
            codec: Encoding of outgoing commands.
            http_client: An httpx client to use for the authz service (not closed by us).
            logger: Where to log (default ``logging.getLogger("amora_sync")``).
            session_store: Keep the session between runs, in this file (created with mode
                0600) or `SessionStore`: the next start resumes it without logging in, and
                closing keeps it (``aclose(logout=True)`` ends it). None: every start logs
                in afresh and closing logs out.
            tracer_provider: An OpenTelemetry ``TracerProvider`` to trace commands with
                (needs the ``telemetry`` extra; default: the application's global provider,
                if it set one). See the README's "Tracing".
        """
        if not resend_interval > 0:
            raise ValueError(f"resend_interval must be a positive number of seconds, not {resend_interval!r}")
        if transport not in _TRANSPORTS:
            raise ValueError(f"transport must be one of {', '.join(map(repr, _TRANSPORTS))}, not {transport!r}")
        self._transport: str = transport
        self._authz_url = authz_url
        self._token_provider = token_provider
        self._ca_file = None if ca_file is None else os.fspath(ca_file)
        self._ssl_context = ssl_context
        self._connect_timeout = connect_timeout
        self._max_watched = max_watched_devices
        self._rate_limit_wait = rate_limit_wait
        self._own_http = http_client is None
        self._http = http_client
        self._log = logger or logging.getLogger("amora_sync")
        policy = reconnect or ReconnectPolicy()

        self.stats = ClientStats()
        store: SessionStore | None
        if session_store is None or isinstance(session_store, SessionStore):
            store = session_store
        else:
            store = FileSessionStore(session_store)
        self._keeper = SessionKeeper(
            client_name=client_name,
            refresh_margin=refresh_margin,
            stats=self.stats,
            logger=self._log,
            store=store,
            authz_url=authz_url,
        )
        self._keeper.on_change = self._session_changed
        self._cache = DeviceCache(stats=self.stats)
        tracer = CommandTracer(tracer_provider)
        self._outbox = Outbox(
            max_pending=max_pending_commands,
            resend_interval=resend_interval,
            codec=codec,
            session=self._keeper.require,
            sender=self._keeper.sender,
            app_clock_offset=self._keeper.authz_clock_offset,
            stats=self.stats,
            logger=self._log,
            tracer=tracer,
        )
        inbound = InboundVerifier(
            session=lambda: self._keeper.session,
            decrypt_key=self._keeper.encryption_key,
            on_state=self._cache.on_state,
            on_status=self._on_status,
            on_response=self._outbox.on_response,
            stats=self.stats,
            logger=self._log,
            tracer=tracer,
        )
        self._subscriber = Subscriber(limit=policy.connect_timeout, logger=self._log)
        self._conn = ConnectionLoop(
            session=self._keeper.require,
            policy=policy,
            tls=self._tls,
            session_expiry=session_expiry,
            keepalive=keepalive,
            on_message=inbound,
            stats=self.stats,
            logger=self._log,
            transport=transport,
        )
        self._conn.prepare = self._prepare_link
        self._conn.ready = self._link_ready
        self._conn.lost = self._outbox.detach
        self._conn.credential_refused = self._reexchange
        self._tasks: asyncio.TaskGroup | None = None
        self._runner: asyncio.Task[None] | None = None
        self._closing = False
        self._failed = False  # a background task died: no new work, but aclose() still cleans up

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Self:
        """Resume the stored session or exchange the token, connect, subscribe.

        Raises:
            AuthenticationError: The token was refused.
            RateLimitedError: The authz service's rate limit lasted longer than `rate_limit_wait`.
            SessionError: The authz service failed.
            ConnectError: No endpoint accepted a connection within `connect_timeout`, or
                `ca_file` cannot be loaded (the message names the path).
        """
        if self._http is None:
            verify: ssl.SSLContext | bool = True
            if self._ca_file is not None:
                verify = self._tls()
            self._http = httpx.AsyncClient(timeout=10.0, verify=verify)
        self._keeper.bind(
            SessionApi(
                self._http,
                self._authz_url,
                self._token_provider,
                rate_limit_wait=self._rate_limit_wait,
                on_rate_limited=self._rate_limited,
            )
        )
        try:
            if not await self._keeper.resume():
                await self._keeper.exchange()
        except BaseException:
            await self._close_http()
            raise
        try:
            self._check_transport()
        except ConnectError:
            await self.aclose()  # logs the session out: this client cannot use it
            raise
        self._closing = False
        self._failed = False
        self._cache.accepting = True
        self._conn.set_state(ConnectionInfo(state=ConnectionState.CONNECTING))
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._runner = asyncio.create_task(self._run(ready), name=f"amora-sync[{self._keeper.short_id}].run")
        await ready
        if self._connect_timeout is not None:
            try:
                async with asyncio.timeout(self._connect_timeout):
                    await self._first_connection()
            except TimeoutError:
                attempts, last = self._conn.attempts, self._conn.last_error
                await self.aclose()
                raise ConnectError(
                    f"no broker endpoint accepted a connection within {self._connect_timeout} s",
                    attempts=attempts,
                    last_error=last,
                ) from None
            if not self._conn.connected.is_set():
                # A certificate that fails verification will fail the same way on every
                # retry: say so now instead of after the whole connect timeout.
                attempts, last = self._conn.attempts, self._conn.last_error
                await self.aclose()
                raise ConnectError(f"no broker endpoint could be trusted: {last}", attempts=attempts, last_error=last)
        return self

    def _check_transport(self) -> None:
        """Fail at once when the session has no endpoint for the chosen transport."""
        endpoints = self._keeper.require().broker.endpoints
        if not select_endpoints(endpoints, self._transport):
            listed = ", ".join(map(str, endpoints))
            message = (
                f"the session lists no {self._transport} endpoint (it lists {listed}); "
                "pick a transport it offers or ask the operator to configure one"
            )
            raise ConnectError(message, attempts=0, last_error=None)

    async def _first_connection(self) -> None:
        """Wait until connected, or until every endpoint failed certificate verification."""
        async with asyncio.TaskGroup() as tg:
            waits = [tg.create_task(self._conn.connected.wait()), tg.create_task(self._conn.untrusted.wait())]
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for task in waits:
                task.cancel()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close: see `aclose`."""
        await self.aclose()

    async def aclose(self, *, logout: bool | None = None) -> None:
        """Stop the background tasks, disconnect, end watches and pending commands.

        Args:
            logout: Also end the session at the authz service (best effort) and forget
                the stored one. None: log out unless a ``session_store`` keeps the session
                for the next start.
        """
        if logout is None:
            logout = not self._keeper.has_store
        if self._closing:
            return
        self._closing = True
        if self._runner is not None:
            await cancel_and_wait(self._runner)
            self._runner = None
        # This client's keys die with it: nothing can resume the broker session.
        await self._conn.close(end_session=True)
        self._fail_all(None)
        api, session = self._keeper.api, self._keeper.session
        if logout:
            self._keeper.forget()
        if logout and api is not None and session is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2):
                    await api.delete(session)
        await self._close_http()

    async def _close_http(self) -> None:
        if self._own_http and self._http is not None:
            await self._http.aclose()
            self._http = None

    async def _run(self, ready: asyncio.Future[None]) -> None:
        sid = self._keeper.short_id
        try:
            async with asyncio.TaskGroup() as tg:
                self._tasks = tg
                tg.create_task(self._conn.run(), name=f"amora-sync[{sid}].connection")
                tg.create_task(self._keeper.run(), name=f"amora-sync[{sid}].session-refresh")
                tg.create_task(self._outbox.run(), name=f"amora-sync[{sid}].outbox")
                tg.create_task(self._outbox.run_resends(), name=f"amora-sync[{sid}].resends")
                ready.set_result(None)
        except Exception as exc:  # noqa: BLE001 - a bug must end the client visibly, not hang it
            self._log.exception("amora-sync: background task failed; the client is closed")
            self._fail_all(f"background task failed: {exc!r}")

    def _fail_all(self, error: str | None) -> None:
        """End everything that waits on this client (it can no longer work)."""
        self._failed = True
        self._conn.connected.clear()
        self._outbox.fail_all(error)
        self._cache.close()
        self._keeper.close()
        self._conn.set_state(ConnectionInfo(state=ConnectionState.CLOSED, error=error))

    # ------------------------------------------------------------------ public API

    @property
    def session_id(self) -> str:
        """The current session id.

        Raises:
            ClientClosedError: No session yet.
        """
        return self._keeper.require().session_id

    @property
    def resumed(self) -> bool:
        """Whether the current session was resumed from the ``session_store`` (not exchanged)."""
        return self._keeper.resumed

    @property
    def resume_error(self) -> str | None:
        """Why the stored session could not be resumed (then a new one was exchanged), if so."""
        return self._keeper.resume_error

    @property
    def devices(self) -> tuple[DeviceInfo, ...]:
        """The devices this session may use, with their public keys."""
        return tuple(self._keeper.require().devices.values())

    @property
    def connection(self) -> ConnectionInfo:
        """The current connection state (synchronous)."""
        return self._conn.info

    @property
    def connected(self) -> bool:
        """Whether the client is connected and subscribed right now."""
        return self._conn.connected.is_set()

    def connection_changes(self) -> AsyncIterator[ConnectionInfo]:
        """Yield the connection state now and on every change (latest only when slow)."""
        return self._conn.changes()

    def session_changes(self) -> AsyncIterator[Session]:
        """Yield the current session now and after every refresh or new exchange.

        A refresh keeps the session id (new expiry and grant); a new exchange (the
        session was refused or gone) brings a new session id and broker credential.
        Latest only when the consumer is slow; ends when the client closes.

        Raises:
            ClientClosedError: No session yet.
        """
        self._keeper.require()
        return self._keeper.changes()

    async def wait_connected(self, *, timeout: float) -> None:  # noqa: ASYNC109 - aiomqtt-like API
        """Wait until connected (and subscribed).

        Raises:
            ConnectError: Not connected within `timeout` seconds.
        """
        try:
            async with asyncio.timeout(timeout):
                await self._conn.connected.wait()
        except TimeoutError:
            raise ConnectError(
                f"not connected within {timeout} s",
                attempts=self._conn.attempts,
                last_error=self._conn.last_error,
            ) from None

    def watch(self, *device_ids: str, include_connection: bool = True) -> Watch:
        """Watch some devices (none given: all of the session's devices).

        Args:
            *device_ids: The devices to watch.
            include_connection: Also yield `ConnectionStatus` changes.

        Returns:
            A `Watch`: an async iterator (and async context manager) of `WatchEvent`.

        Raises:
            InvalidDeviceIdError: A device id is malformed.
            UnknownDeviceError: A device is not in the session.
        """
        wanted: frozenset[str] | None = None
        if device_ids:
            for device_id in device_ids:
                self._device(device_id)
            wanted = frozenset(device_ids)
        return Watch(
            self._cache,
            wanted,
            include_connection=include_connection,
            max_devices=min(self._max_watched, len(wanted) if wanted else self._max_watched),
        )

    def state(self, device_id: str) -> DeviceState | None:
        """The last verified state of `device_id`, or None before the first."""
        return self._cache.state(device_id)

    def connection_status(self, device_id: str) -> ConnectionStatus | None:
        """The last verified connection status of `device_id`, or None."""
        return self._cache.status(device_id)

    def position_ms(self, device_id: str, *, at_ms: int | None = None) -> int | None:
        """The interpolated playback position of `device_id` now (or at `at_ms`).

        Returns None when no state is known or nothing is loaded.
        """
        state = self._cache.state(device_id)
        if state is None:
            return None
        return state.position_at(now_ms() if at_ms is None else at_ms)

    async def command(  # noqa: PLR0913 - keyword-only options; timeout = deadline
        self,
        device_id: str,
        action: Action,
        *,
        timeout: float = 10.0,  # noqa: ASYNC109 - the command's deadline, not a wait bound
        qos: int | None = None,
        if_version: int | None = None,
        seal: bool = False,
    ) -> CommandResponse:
        """Send `action` to `device_id` and return its final response.

        The command expires `timeout` seconds from now: the device refuses it
        after that, and if the client is offline until then it is never sent.

        Args:
            device_id: The device.
            action: One of the protocol's action structs (`Play()`, `SetVolume(40)`, ...).
            timeout: Seconds until the command's deadline.
            qos: MQTT QoS (default 2 for actions whose repetition matters, else 1).
            if_version: Apply only if the device's state version still equals this.
            seal: Encrypt the command to the device's key (HPKE).

        Returns:
            The device's verified response (status ``succeeded`` or ``duplicate``).

        A command still waiting for its answer when the link changes (reconnect, failover,
        failback) is sent again with the same id, and so is one with no answer at all when
        the device publishes a new online status and every `resend_interval` seconds; the
        device runs it at most once and answers a repeat with the original outcome, which is
        what this returns or raises.

        Raises:
            DeviceBusyError: The device could not take it now (``busy``; `retry_after` says when).
            ClockSkewError: The device's clock and this app's differ beyond the allowance
                (the error says whose clock is off).
            CommandRejectedError: The device answered ``rejected`` or ``failed``.
            CommandExpiredError: The deadline passed before the command could be sent.
            CommandTimeoutError: It was sent but no final response came in time.
            OutboxFullError: Too many commands are pending.
            UnknownDeviceError: The device is not in this session.
            InvalidDeviceIdError: The device id is malformed.
            InvalidCommandError: The action or options are invalid (nothing is sent).
            ClientClosedError: The client is not open or closed meanwhile.
        """
        if self._closing or self._failed or self._runner is None:
            raise ClientClosedError("the client is not open")
        device = self._device(device_id)
        return await self._outbox.send(device, action, timeout=timeout, qos=qos, if_version=if_version, seal=seal)

    # ------------------------------------------------------------------ internals

    def _device(self, device_id: str) -> DeviceInfo:
        try:
            validate_device_id(device_id)
        except InvalidDeviceId as exc:
            raise InvalidDeviceIdError(device_id, str(exc)) from exc
        device = self._keeper.require().devices.get(device_id)
        if device is None:
            raise UnknownDeviceError(device_id)
        return device

    def _tls(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            try:
                ctx = ssl.create_default_context(cafile=self._ca_file)
            except (OSError, ssl.SSLError) as exc:
                # Raised before anything is sent: a missing or unreadable bundle is a setup
                # mistake, not a network failure, so it is never retried.
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                message = (
                    f"cannot load the CA file {self._ca_file}: {reason}; pass ca_file= the PEM bundle of the "
                    "CA that signed the broker's and the authz service's certificates"
                )
                raise ConnectError(message, attempts=0, last_error=reason) from exc
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            self._ssl_context = ctx
        return self._ssl_context

    async def _prepare_link(self, link: Link, _session_present: bool) -> None:  # noqa: FBT001
        await self._subscriber.subscribe(link, self._keeper.require().devices)
        if self.stats.connects > 0:
            # The broker also drops clients whose access changed: a refresh brings the
            # current device list.
            self._keeper.refresh_soon()

    def _on_status(self, status: ConnectionStatus) -> None:
        # A new online status may mean the device just reached this broker: what it was sent
        # before may have been dropped there, so its unanswered commands go again.
        if self._cache.on_status(status) and status.online:
            self._outbox.device_online(status.device_id)

    def _rate_limited(self, wait: float) -> None:
        self.stats.rate_limit_waits += 1
        self._log.info("amora-sync: the authz service is rate limiting sessions; trying again in %.1f s", wait)

    def _link_ready(self, link: Link, _session_present: bool) -> None:  # noqa: FBT001
        self._keeper.resume_confirmed()
        self._outbox.attach(link)

    async def _reexchange(self) -> None:
        if self._keeper.resume_unconfirmed:
            self._keeper.resume_refused()
        try:
            await self._keeper.exchange()
        except SessionError as exc:
            self._conn.last_error = f"session exchange failed: {exc}"
            self._log.warning("amora-sync: %s", self._conn.last_error)

    def _session_changed(self, old: Session | None, session: Session) -> None:
        # A refresh in token mode brings a new password for the same account: the next
        # CONNECT takes it (`ConnectionLoop`), the live link stays. Anything else is a new account.
        if old is not None and replace(old.broker, password=session.broker.password) != session.broker:
            self._conn.credentials_changed()
        elif old is not None and self._tasks is not None:
            added = [d for d in session.devices if d not in old.devices]
            link = self._conn.link
            if added and link is not None and self._conn.connected.is_set():
                self._tasks.create_task(
                    self._subscriber.subscribe_added(link, added),
                    name=f"amora-sync[{self._keeper.short_id}].subscribe-added",
                )
        self._cache.retain_only(session.devices)
