"""The client: session, connection loop, verified fan-out to watchers, commands."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import math
import os
import secrets
import ssl
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Self

import httpx
import msgspec

from amora_protocol import (
    Codec,
    Command,
    CommandResponse,
    CommandStatus,
    ConnectionStatus,
    DeviceState,
    EncryptionKey,
    InvalidDeviceId,
    ProtocolError,
    Sender,
    SigningKey,
    TopicKind,
    commands_topic,
    connection_topic,
    is_critical,
    parse_topic,
    responses_topic,
    state_topic,
    validate_device_id,
    verify_envelope,
)
from amora_sync._errors import (
    AuthzUnavailableError,
    ClientClosedError,
    CommandExpiredError,
    CommandRejectedError,
    CommandTimeoutError,
    ConnectError,
    InvalidCommandError,
    InvalidDeviceIdError,
    OutboxFullError,
    SessionError,
    UnknownDeviceError,
)
from amora_sync._flow import Backoff, LatestPerKeyQueue, QueueClosedError, ReconnectPolicy
from amora_sync._session import SessionApi, refresh_delay
from amora_sync._transport import LinkError, MqttLink

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterable, Mapping
    from types import TracebackType

    from amora_protocol import Action
    from amora_sync._session import DeviceInfo, Endpoint, Session, TokenProvider

WatchEvent = DeviceState | ConnectionStatus
"""What a watch yields: a verified state or a verified connection status."""

_FINAL_OK = frozenset({"succeeded", "duplicate"})
_FINAL_BAD = frozenset({"rejected", "failed"})


def now_ms() -> int:
    """Return the wall clock in ms since the epoch."""
    return time.time_ns() // 1_000_000


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


@dataclass(kw_only=True)
class ClientStats:
    """Counters, for dashboards and tests.

    Attributes:
        received: Messages received on the device topics.
        delivered: Verified states and statuses handed to watchers (before fan-out).
        invalid: Messages dropped because verification failed (bad signature, wrong key,
            wrong topic, malformed, not from a session device).
        stale: Verified states dropped as duplicates or older versions.
        connects: Successful connections (the first one included).
        session_exchanges: Token exchanges (``POST /v1/sessions``).
        session_refreshes: Successful session refreshes.
        commands_sent: Command publishes (re-sends after a lost session included).
    """

    received: int = 0
    delivered: int = 0
    invalid: int = 0
    stale: int = 0
    connects: int = 0
    session_exchanges: int = 0
    session_refreshes: int = 0
    commands_sent: int = 0


@dataclass(kw_only=True)
class _Pending:
    command: Command
    device: DeviceInfo
    qos: int
    seal: bool
    deadline: float  # loop time
    final: asyncio.Future[CommandResponse]
    published: bool = False
    last: CommandResponse | None = None


class Watch:
    """A stream of verified `DeviceState` and `ConnectionStatus` for some devices.

    Use it as ``async with client.watch(...) as events: async for event in events``
    (or directly with ``async for``). It yields the current state first, then
    only newer versions. Its queue holds at most one waiting state and one
    waiting status per device: when the consumer is slower than the devices,
    intermediate versions are skipped (counted in `superseded`) and the newest
    is delivered, so neither memory nor other watchers suffer.
    """

    def __init__(
        self,
        client: AmoraClient,
        device_ids: frozenset[str] | None,
        *,
        include_connection: bool,
        max_devices: int,
    ) -> None:
        """Create the watch (use `AmoraClient.watch`)."""
        self._client = client
        self.device_ids = device_ids
        self.include_connection = include_connection
        self._queue: LatestPerKeyQueue[tuple[str, str], WatchEvent] = LatestPerKeyQueue(max_keys=2 * max_devices)
        self._registered = False

    @property
    def superseded(self) -> int:
        """How many waiting events were replaced by newer ones (slow consumer)."""
        return self._queue.superseded

    def wants(self, device_id: str) -> bool:
        """Whether this watch covers `device_id`."""
        return self.device_ids is None or device_id in self.device_ids

    def offer(self, event: WatchEvent) -> None:
        """Queue `event` (called by the client; never blocks)."""
        kind = "state" if isinstance(event, DeviceState) else "connection"
        self._queue.put((event.device_id, kind), event)

    def _register(self) -> None:
        if not self._registered:
            self._registered = True
            self._client._add_watch(self)  # noqa: SLF001

    def close(self) -> None:
        """Stop the watch: iteration ends after what is already queued."""
        self._queue.close()
        self._client._remove_watch(self)  # noqa: SLF001

    async def __aenter__(self) -> Self:
        """Start watching."""
        self._register()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        """Stop watching."""
        self.close()

    def __aiter__(self) -> Self:
        """Return self (registering if needed)."""
        self._register()
        return self

    async def __anext__(self) -> WatchEvent:
        """Return the next event."""
        try:
            return await self._queue.get()
        except QueueClosedError:
            raise StopAsyncIteration from None


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
        client_name: str | None = None,
        reconnect: ReconnectPolicy | None = None,
        connect_timeout: float | None = 30.0,
        session_expiry: int = 3600,
        keepalive: int = 30,
        refresh_margin: float = 0.2,
        max_pending_commands: int = 256,
        max_watched_devices: int = 10_000,
        codec: Codec = Codec.MSGPACK,
        http_client: httpx.AsyncClient | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        """Configure the client; nothing happens until ``async with``.

        Args:
            authz_url: Base URL of the authz service.
            token_provider: Returns the user's current JWT (sync or async callable).
            ca_file: CA bundle to verify the broker and the authz service with.
            ssl_context: A ready TLS context for the broker (overrides `ca_file`).
            client_name: A name shown in the service's session list.
            reconnect: Backoff and attempt bounds.
            connect_timeout: How long entering waits for the first connection
                (None: do not wait; the client connects in the background).
            session_expiry: Broker session expiry interval in seconds (persistent session).
            keepalive: MQTT keepalive in seconds.
            refresh_margin: Refresh the session when this fraction of its life is left.
            max_pending_commands: Bound of the outbox (pending commands); more raise
                `OutboxFullError`.
            max_watched_devices: Bound on the devices one watch queues for.
            codec: Encoding of outgoing commands.
            http_client: An httpx client to use for the authz service (not closed by us).
            logger: Where to log (default ``logging.getLogger("amora_sync")``).
        """
        self._authz_url = authz_url
        self._token_provider = token_provider
        self._ca_file = None if ca_file is None else os.fspath(ca_file)
        self._ssl_context = ssl_context
        self._client_name = client_name
        self._policy = reconnect or ReconnectPolicy()
        self._connect_timeout = connect_timeout
        self._session_expiry = session_expiry
        self._keepalive = keepalive
        self._refresh_margin = refresh_margin
        self._max_pending = max_pending_commands
        self._max_watched = max_watched_devices
        self._codec = codec
        self._own_http = http_client is None
        self._http = http_client
        self._log = logger or logging.getLogger("amora_sync")

        self.stats = ClientStats()
        self._signing_key = SigningKey.generate()
        self._encryption_key = EncryptionKey.generate()
        self._session: Session | None = None
        self._sender: Sender | None = None
        self._api: SessionApi | None = None
        self._link: MqttLink | None = None
        self._connected = asyncio.Event()
        self._state = ConnectionInfo(state=ConnectionState.CLOSED)
        self._state_watchers: set[LatestPerKeyQueue[int, ConnectionInfo]] = set()
        self._session_watchers: set[LatestPerKeyQueue[int, Session]] = set()
        self._states: dict[str, DeviceState] = {}
        self._statuses: dict[str, ConnectionStatus] = {}
        self._watches: set[Watch] = set()
        self._pending: dict[str, _Pending] = {}
        self._outbox_wakeup = asyncio.Event()
        self._new_credentials = asyncio.Event()
        self._refresh_soon = asyncio.Event()
        self._tasks: asyncio.TaskGroup | None = None
        self._runner: asyncio.Task[None] | None = None
        self._last_error: str | None = None
        self._attempts = 0
        self._closing = False
        self._failed = False  # a background task died: no new work, but aclose() still cleans up

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Self:
        """Exchange the token, connect, subscribe.

        Raises:
            AuthenticationError: The token was refused.
            SessionError: The authz service failed.
            ConnectError: No endpoint accepted a connection within `connect_timeout`.
        """
        if self._http is None:
            verify: ssl.SSLContext | bool = True
            if self._ca_file is not None:
                verify = ssl.create_default_context(cafile=self._ca_file)
            self._http = httpx.AsyncClient(timeout=10.0, verify=verify)
        self._api = SessionApi(self._http, self._authz_url, self._token_provider)
        try:
            await self._exchange()
        except BaseException:
            await self._close_http()
            raise
        self._closing = False
        self._failed = False  # a background task died: no new work, but aclose() still cleans up
        self._set_state(ConnectionInfo(state=ConnectionState.CONNECTING))
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._runner = asyncio.create_task(self._run(ready), name=f"amora-sync[{self._sid}].run")
        await ready
        if self._connect_timeout is not None:
            try:
                async with asyncio.timeout(self._connect_timeout):
                    await self._connected.wait()
            except TimeoutError:
                attempts, last = self._attempts, self._last_error
                await self.aclose()
                raise ConnectError(
                    f"no broker endpoint accepted a connection within {self._connect_timeout} s",
                    attempts=attempts,
                    last_error=last,
                ) from None
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close: see `aclose`."""
        await self.aclose()

    async def aclose(self, *, logout: bool = True) -> None:
        """Stop the background tasks, disconnect, end watches and pending commands.

        Args:
            logout: Also end the session at the authz service (best effort).
        """
        if self._closing:
            return
        self._closing = True
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
            self._runner = None
        if self._link is not None:
            # This client's keys die with it: nothing can resume the broker session.
            await self._link.close(end_session=True)
            self._link = None
        self._fail_all(None)
        if logout and self._api is not None and self._session is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2):
                    await self._api.delete(self._session)
        await self._close_http()

    async def _close_http(self) -> None:
        if self._own_http and self._http is not None:
            await self._http.aclose()
            self._http = None

    @property
    def _sid(self) -> str:
        return "-" if self._session is None else self._session.session_id[:12]

    async def _run(self, ready: asyncio.Future[None]) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                self._tasks = tg
                tg.create_task(self._connection_loop(), name=f"amora-sync[{self._sid}].connection")
                tg.create_task(self._refresh_loop(), name=f"amora-sync[{self._sid}].session-refresh")
                tg.create_task(self._outbox_loop(), name=f"amora-sync[{self._sid}].outbox")
                ready.set_result(None)
        except Exception as exc:  # noqa: BLE001 - a bug must end the client visibly, not hang it
            self._log.exception("amora-sync: background task failed; the client is closed")
            self._fail_all(f"background task failed: {exc!r}")

    def _fail_all(self, error: str | None) -> None:
        """End everything that waits on this client (it can no longer work)."""
        self._failed = True
        self._connected.clear()
        for pending in list(self._pending.values()):
            if not pending.final.done():
                why = error or "the client closed before the command completed"
                pending.final.set_exception(ClientClosedError(why))
                # Retrieved by the waiter, or by nobody: do not warn either way.
                pending.final.exception()
        for watch in list(self._watches):
            watch.close()
        for queue in list(self._session_watchers):
            queue.close()
        self._set_state(ConnectionInfo(state=ConnectionState.CLOSED, error=error))

    # ------------------------------------------------------------------ public API

    @property
    def session_id(self) -> str:
        """The current session id.

        Raises:
            ClientClosedError: No session yet.
        """
        return self._require_session().session_id

    @property
    def devices(self) -> tuple[DeviceInfo, ...]:
        """The devices this session may use, with their public keys."""
        return tuple(self._require_session().devices.values())

    @property
    def connection(self) -> ConnectionInfo:
        """The current connection state (synchronous)."""
        return self._state

    @property
    def connected(self) -> bool:
        """Whether the client is connected and subscribed right now."""
        return self._connected.is_set()

    async def connection_changes(self) -> AsyncIterator[ConnectionInfo]:
        """Yield the connection state now and on every change (latest only when slow)."""
        queue: LatestPerKeyQueue[int, ConnectionInfo] = LatestPerKeyQueue(max_keys=1)
        queue.put(0, self._state)
        self._state_watchers.add(queue)
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
            self._state_watchers.discard(queue)

    async def session_changes(self) -> AsyncIterator[Session]:
        """Yield the current session now and after every refresh or new exchange.

        A refresh keeps the session id (new expiry and grant); a new exchange (the
        session was refused or gone) brings a new session id and broker credential.
        Latest only when the consumer is slow; ends when the client closes.
        """
        queue: LatestPerKeyQueue[int, Session] = LatestPerKeyQueue(max_keys=1)
        queue.put(0, self._require_session())
        self._session_watchers.add(queue)
        try:
            while True:
                try:
                    yield await queue.get()
                except QueueClosedError:
                    return
        finally:
            self._session_watchers.discard(queue)

    async def wait_connected(self, *, timeout: float) -> None:  # noqa: ASYNC109 - aiomqtt-like API
        """Wait until connected (and subscribed).

        Raises:
            ConnectError: Not connected within `timeout` seconds.
        """
        try:
            async with asyncio.timeout(timeout):
                await self._connected.wait()
        except TimeoutError:
            raise ConnectError(
                f"not connected within {timeout} s",
                attempts=self._attempts,
                last_error=self._last_error,
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
            self,
            wanted,
            include_connection=include_connection,
            max_devices=min(self._max_watched, len(wanted) if wanted else self._max_watched),
        )

    def state(self, device_id: str) -> DeviceState | None:
        """The last verified state of `device_id`, or None before the first."""
        return self._states.get(device_id)

    def connection_status(self, device_id: str) -> ConnectionStatus | None:
        """The last verified connection status of `device_id`, or None."""
        return self._statuses.get(device_id)

    def position_ms(self, device_id: str, *, at_ms: int | None = None) -> int | None:
        """The interpolated playback position of `device_id` now (or at `at_ms`).

        Returns None when no state is known or nothing is loaded.
        """
        state = self._states.get(device_id)
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

        Raises:
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
        if seal and device.encryption_key is None:
            raise InvalidCommandError(f"device {device_id!r} has no encryption key to seal to")
        if qos is None:
            qos = 2 if is_critical(action) else 1
        if qos not in {0, 1, 2}:
            raise InvalidCommandError(f"qos must be 0, 1 or 2, not {qos!r}")
        issued = now_ms()
        command = Command(
            id=str(_uuid7(issued)),
            issued_at_ms=issued,
            expires_at_ms=issued + max(1, int(timeout * 1000)),
            action=action,
            if_version=if_version,
        )
        validate_command(command)
        if len(self._pending) >= self._max_pending:
            raise OutboxFullError(
                f"{len(self._pending)} commands pending; try again later",
                device_id=device_id,
                command_id=command.id,
            )
        loop = asyncio.get_running_loop()
        pending = _Pending(
            command=command,
            device=device,
            qos=qos,
            seal=seal,
            deadline=loop.time() + timeout,
            final=loop.create_future(),
        )
        self._pending[command.id] = pending
        try:
            if self._connected.is_set() and self._link is not None:
                self._publish_command(self._link, pending)
            try:
                async with asyncio.timeout_at(pending.deadline):
                    response = await asyncio.shield(pending.final)
            except TimeoutError:
                if not pending.published:
                    raise CommandExpiredError(
                        f"command {command.id} to {device_id!r} expired in the outbox (never sent)",
                        device_id=device_id,
                        command_id=command.id,
                    ) from None
                raise CommandTimeoutError(
                    f"no final response from {device_id!r} to {command.id} within {timeout} s",
                    device_id=device_id,
                    command_id=command.id,
                    last_response=pending.last,
                ) from None
        finally:
            self._pending.pop(command.id, None)
        if _status(response) in _FINAL_BAD:
            raise CommandRejectedError(response, device_id=device_id, command_id=command.id)
        return response

    # ------------------------------------------------------------------ internals: registry

    def _require_session(self) -> Session:
        if self._session is None:
            raise ClientClosedError("the client is not open")
        return self._session

    def _device(self, device_id: str) -> DeviceInfo:
        try:
            validate_device_id(device_id)
        except InvalidDeviceId as exc:
            raise InvalidDeviceIdError(device_id, str(exc)) from exc
        device = self._require_session().devices.get(device_id)
        if device is None:
            raise UnknownDeviceError(device_id)
        return device

    def _add_watch(self, watch: Watch) -> None:
        if self._closing or self._failed:
            watch.close()
            return
        self._watches.add(watch)
        # The current (retained) state first.
        for device_id, state in list(self._states.items()):
            if watch.wants(device_id):
                watch.offer(state)
        if watch.include_connection:
            for device_id, status in list(self._statuses.items()):
                if watch.wants(device_id):
                    watch.offer(status)

    def _remove_watch(self, watch: Watch) -> None:
        self._watches.discard(watch)

    def _set_state(self, info: ConnectionInfo) -> None:
        self._state = info
        for queue in list(self._state_watchers):
            queue.put(0, info)
            if info.state is ConnectionState.CLOSED:
                queue.close()

    # ------------------------------------------------------------------ internals: session

    async def _exchange(self) -> None:
        assert self._api is not None  # noqa: S101 - set in __aenter__
        session = await self._api.create(self._signing_key, self._encryption_key, client_name=self._client_name)
        self.stats.session_exchanges += 1
        self._adopt(session)

    def _adopt(self, session: Session) -> None:
        old = self._session
        self._session = session
        if old is None or old.session_id != session.session_id or self._sender is None:
            self._sender = Sender(
                sender_id=session.session_id,
                signing_key=self._signing_key,
                epoch=secrets.randbits(63),
            )
        if old is not None and old.broker != session.broker:
            self._new_credentials.set()
            if self._link is not None:
                self._link.force_drop()
        elif old is not None and self._tasks is not None:
            added = [d for d in session.devices if d not in old.devices]
            if added and self._link is not None and self._connected.is_set():
                self._tasks.create_task(
                    self._subscribe_added(self._link, added),
                    name=f"amora-sync[{self._sid}].subscribe-added",
                )
        for queue in list(self._session_watchers):
            queue.put(0, session)
        # Forget what the session no longer covers.
        for device_id in set(self._states) - set(session.devices):
            self._states.pop(device_id, None)
        for device_id in set(self._statuses) - set(session.devices):
            self._statuses.pop(device_id, None)

    async def _refresh_loop(self) -> None:
        assert self._api is not None  # noqa: S101 - set in __aenter__
        backoff = Backoff(policy=ReconnectPolicy(initial_delay=1.0, max_delay=30.0))
        while True:
            session = self._require_session()
            # Due time, or earlier after a reconnect: the broker also kicks clients when
            # their access changes, and a refresh brings the current device list.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(refresh_delay(session, now_ms=now_ms(), margin=self._refresh_margin)):
                    await self._refresh_soon.wait()
            self._refresh_soon.clear()
            try:
                try:
                    fresh = await self._api.refresh(session)
                    self.stats.session_refreshes += 1
                except AuthzUnavailableError:
                    raise
                except SessionError as exc:
                    # The session is gone (expired, deleted): start a new one.
                    self._log.info("amora-sync: session refresh refused (%s); exchanging again", exc)
                    fresh = await self._api.create(
                        self._signing_key, self._encryption_key, client_name=self._client_name
                    )
                    self.stats.session_exchanges += 1
            except SessionError as exc:
                # The live connection is unaffected; retry a little later.
                self._log.warning("amora-sync: session refresh failed: %s", exc)
                await asyncio.sleep(max(0.5, backoff.next_delay()))
                continue
            backoff.reset()
            self._adopt(fresh)

    # ------------------------------------------------------------------ internals: connection

    def _tls(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            ctx = ssl.create_default_context(cafile=self._ca_file)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            self._ssl_context = ctx
        return self._ssl_context

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

    async def _connection_loop(self) -> None:
        backoff = Backoff(policy=self._policy)
        start = 0
        while True:
            session = self._require_session()
            self._new_credentials.clear()
            if self._link is None or self._link.client_id != session.broker.client_id:
                if self._link is not None:
                    await self._link.close()
                self._link = self._new_link(session)
            link = self._link
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

    async def _attempt(self, link: MqttLink, endpoint: Endpoint) -> bool:
        self._attempts += 1
        try:
            present = await link.connect(endpoint, ssl_context=self._tls(), limit=self._policy.connect_timeout)
            await self._after_connect(link, present)
        except LinkError as exc:
            self._last_error = str(exc)
            self._log.info("amora-sync: %s", exc)
            if link.connected:
                await link.close()
            if exc.credential_refused:
                await self._reexchange()
            return False
        except OSError as exc:  # TLS context problems surface here
            self._last_error = repr(exc)
            self._log.warning("amora-sync: cannot connect to %s: %r", endpoint, exc)
            return False
        self.stats.connects += 1
        self._last_error = None
        return True

    async def _reexchange(self) -> None:
        try:
            await self._exchange()
        except SessionError as exc:
            self._last_error = f"session exchange failed: {exc}"
            self._log.warning("amora-sync: %s", self._last_error)

    async def _subscribe(self, link: MqttLink, device_ids: Iterable[str]) -> None:
        topics: list[str] = []
        for device_id in device_ids:
            topics.extend((state_topic(device_id), connection_topic(device_id), responses_topic(device_id)))
        if topics:
            granted = await link.subscribe(topics, qos=1, limit=self._policy.connect_timeout)
            refused = [t for t, code in zip(topics, granted, strict=False) if code >= 0x80]
            if refused:
                self._log.warning("amora-sync: broker refused subscriptions: %s", refused)

    async def _subscribe_added(self, link: MqttLink, device_ids: list[str]) -> None:
        try:
            await self._subscribe(link, device_ids)
        except LinkError as exc:
            # The next connection subscribes to every session device anyway.
            self._log.info("amora-sync: subscribing to new devices failed: %s", exc)

    async def _after_connect(self, link: MqttLink, session_present: bool) -> None:  # noqa: FBT001
        # Subscribing again even when the broker kept our session re-sends the retained
        # state and status: that is the resync after every reconnect (duplicates and
        # older versions are dropped by version).
        await self._subscribe(link, self._require_session().devices)
        if self.stats.connects > 0:
            self._refresh_soon.set()
        self._connected.set()
        self._set_state(ConnectionInfo(state=ConnectionState.CONNECTED, endpoint=link.endpoint))
        # Flush the outbox: what was never sent, and everything in flight when the
        # broker lost our session (the device drops duplicates by command id).
        self._flush(link, resend=not session_present)

    def _flush(self, link: MqttLink, *, resend: bool) -> None:
        loop = asyncio.get_running_loop()
        for pending in list(self._pending.values()):
            if pending.final.done() or loop.time() >= pending.deadline:
                continue  # expired ones are never sent: command() reports them
            if (not pending.published or resend) and not self._publish_command(link, pending):
                return  # the broker's receive maximum is reached; the outbox task resumes

    async def _outbox_loop(self) -> None:
        # Strategy: commands that could not be published because too many QoS 1/2
        # publishes await acknowledgement are sent once those drain (an event from
        # gmqtt's in-flight store, not a poll), oldest first.
        while True:
            await self._outbox_wakeup.wait()
            self._outbox_wakeup.clear()
            link = self._link
            if link is None or not self._connected.is_set():
                continue  # the next connection flushes the outbox
            await link.wait_inflight_drained()
            if link.connected:
                self._flush(link, resend=False)

    async def _serve(self, link: MqttLink, endpoint: Endpoint) -> None:
        self._log.info("amora-sync: connected to %s", endpoint)
        await link.lost.wait()
        self._connected.clear()
        if not self._closing:
            self._set_state(ConnectionInfo(state=ConnectionState.RECONNECTING, endpoint=endpoint))

    def _publish_command(self, link: MqttLink, pending: _Pending) -> bool:
        session = self._require_session()
        assert self._sender is not None  # noqa: S101 - set with the session
        device_id = pending.device.device_id
        topic = commands_topic(device_id)
        now = now_ms()
        payload = self._sender.encode(
            topic,
            pending.command,
            now_ms=now,
            expires_at_ms=pending.command.expires_at_ms,
            grant=session.grant,
            codec=self._codec,
            seal_to=pending.device.encryption_key if pending.seal else None,
        )
        remaining_s = max(1, math.ceil((pending.command.expires_at_ms - now) / 1000))
        sent = link.publish(
            topic,
            payload,
            qos=pending.qos,
            content_type=str(self._codec.value),
            response_topic=responses_topic(device_id),
            correlation_data=pending.command.id.encode(),
            message_expiry_interval=remaining_s,
        )
        if not sent:
            self._outbox_wakeup.set()
            return False
        pending.published = True
        self.stats.commands_sent += 1
        return True

    # ------------------------------------------------------------------ internals: inbound

    def _on_message(self, topic: str, payload: bytes, properties: Mapping[str, Any]) -> None:
        self.stats.received += 1
        session = self._session
        if session is None:
            return
        try:
            parsed = parse_topic(topic)
        except ProtocolError:
            self.stats.invalid += 1
            return
        device = session.devices.get(parsed.device_id)
        if device is None:
            self.stats.invalid += 1
            return
        content_types = properties.get("content_type") or [None]
        try:
            verified = verify_envelope(
                payload,
                topic=topic,
                content_type=content_types[0],
                key=device.signing_key,
                now_ms=now_ms(),
                decrypt_key=self._encryption_key,
            )
        except ProtocolError as exc:
            self.stats.invalid += 1
            self._log.warning("amora-sync: dropped unverifiable message on %s: %s", topic, exc)
            return
        message = verified.message
        device_id = parsed.device_id
        if parsed.kind == TopicKind.STATE and isinstance(message, DeviceState) and message.device_id == device_id:
            self._on_state(message)
        elif (
            parsed.kind == TopicKind.CONNECTION
            and isinstance(message, ConnectionStatus)
            and message.device_id == device_id
        ):
            self._on_status(message)
        elif (
            parsed.kind == TopicKind.RESPONSES
            and isinstance(message, CommandResponse)
            and message.device_id == device_id
        ):
            self._on_response(message)
        else:
            self.stats.invalid += 1
            self._log.warning("amora-sync: dropped %s on %s (wrong type or device)", type(message).__name__, topic)

    def _on_state(self, state: DeviceState) -> None:
        held = self._states.get(state.device_id)
        if held is not None and state.version <= held.version:
            self.stats.stale += 1
            return
        self._states[state.device_id] = state
        self.stats.delivered += 1
        for watch in list(self._watches):
            if watch.wants(state.device_id):
                watch.offer(state)

    def _on_status(self, status: ConnectionStatus) -> None:
        # Statuses arrive in order per topic; the device's Last Will is signed when it
        # connects, so its timestamp can be older than the online status: last one wins.
        if self._statuses.get(status.device_id) == status:
            self.stats.stale += 1
            return
        self._statuses[status.device_id] = status
        self.stats.delivered += 1
        for watch in list(self._watches):
            if watch.include_connection and watch.wants(status.device_id):
                watch.offer(status)

    def _on_response(self, response: CommandResponse) -> None:
        pending = self._pending.get(response.command_id)
        if pending is None or pending.device.device_id != response.device_id or pending.final.done():
            return  # someone else's command (same user, other app) or already settled
        status = _status(response)
        if status in _FINAL_OK or status in _FINAL_BAD:
            pending.final.set_result(response)
        else:
            pending.last = response


_command_codec = msgspec.msgpack.Encoder()
_command_decoder = msgspec.msgpack.Decoder(Command)


def validate_command(command: Command) -> None:
    """Check `command` against the schema the device will apply (structs do not check on build).

    Raises:
        InvalidCommandError: A field is out of range or of the wrong type.
    """
    try:
        _command_decoder.decode(_command_codec.encode(command))
    except (msgspec.ValidationError, msgspec.DecodeError, TypeError) as exc:
        raise InvalidCommandError(f"invalid command: {exc}") from exc


def _status(response: CommandResponse) -> str:
    status: CommandStatus = response.status
    return str(getattr(status, "value", status))


def _uuid7(ms: int) -> uuid.UUID:
    """A UUIDv7 (RFC 9562): 48-bit ms timestamp, version, 74 random bits."""
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76
    value |= ((rand >> 62) & 0xFFF) << 64
    value |= 0b10 << 62
    value |= rand & ((1 << 62) - 1)
    return uuid.UUID(int=value)
