"""The backend consumer: verified messages from the whole fleet, split between replicas.

Each replica of a backend owns one *slot* (a broker account ``svc.backend.{name}.{n}`` with a
persistent session) and takes the backend's shared subscriptions there, so the broker splits
the fleet's messages between the slots. Every message is verified against its device's key
(`DeviceKeyCache`) before it is handed out, and acknowledged (PUBACK) only once the
application asks for the next one, so a message whose processing never finished is
delivered again: at least once, under QoS 1.

mosquitto 2.0 does not hand a dead subscriber's unacknowledged or queued messages to the
rest of its share group (it keeps them in the dead client's session and keeps routing new
ones there). So the replicas watch each other: each publishes ``up`` retained on its presence
topic, with a Last Will (after ``takeover_delay``) that clears it; when a slot is down, the
next live slot in ring order *takes over its session* (connects with that slot's account and
resumes it), receiving everything queued and unacknowledged there, and keeps serving it
until the owner comes back (whose connection then takes the session back). Slots nobody has
started yet are taken over the same way, so N slots are always served while one replica lives.

Duplicates: a message may arrive twice (a redelivery after a lost acknowledgement, the
retained copies mosquitto sends to each new shared subscriber, a taken-over session). The
consumer drops a message identical in (device, kind, version or command id) to one it has
already had acknowledged, remembering the last ``remember`` of them; copies that reach two
replicas, or one replica after a restart, still arrive, so sinks must be idempotent by
``(device_id, version)`` (see the SDK README, "Backends").
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import ssl
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Self

import httpx

from amora_protocol import (
    BACKEND_TOPIC_PREFIX,
    BackendRole,
    CommandResponse,
    ConnectionStatus,
    DeviceState,
    ProtocolError,
    TopicKind,
    UnknownKey,
    backend_kinds,
    backend_replica_account,
    backend_replica_topic,
    now_ms,
    parse_topic,
    shared_subscription,
    validate_backend_name,
    verify_envelope,
)
from amora_sync._backend_keys import DeviceKeyCache
from amora_sync._connection import ConnectionLoop
from amora_sync._errors import AmoraSyncError, AuthzUnavailableError, ClientClosedError, ConnectError
from amora_sync._flow import DEFAULT_CONNECT_TIMEOUT, ReconnectPolicy
from amora_sync._link import LinkError
from amora_sync._session import BrokerCredentials, Endpoint, Session, parse_endpoint, select_endpoints
from amora_sync._stats import ClientStats
from amora_sync._tasks import cancel_and_wait

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from types import TracebackType

    from amora_protocol import VerifyKey
    from amora_sync._link import Link

__all__ = ["BackendConsumer", "BackendCredentials", "BackendStats", "FleetMessage"]

_UP: Final = b"up"
_REFUSED: Final = 0x80
_AUTHZ_RETRY_S: Final = (0.5, 10.0)
# Taking over a slot its owner may be reclaiming: start slower than the owner retries, so
# the two do not keep taking the session from each other.
_TAKEOVER_POLICY: Final = ReconnectPolicy(initial_delay=0.5, max_delay=10.0, failback_interval=0)


@dataclass(frozen=True, kw_only=True)
class BackendCredentials:
    """A backend identity, as ``POST /v1/admin/backends`` (or ``amora-authz backend create``) gives it.

    Attributes:
        name: The backend's name (its share group).
        password: Its password (broker and authz service).
        role: What it may do; decides what the consumer subscribes to.
        replicas: Its slot count (each replica runs one slot).
        endpoints: Broker endpoints, primary first.
    """

    name: str
    password: str = field(repr=False)
    role: BackendRole
    replicas: int
    endpoints: tuple[Endpoint, ...]

    def __post_init__(self) -> None:
        """Check the name and the replica count.

        Raises:
            ValueError: An invalid name, fewer than one replica, or no endpoint.
        """
        validate_backend_name(self.name)
        if self.replicas < 1:
            msg = f"a backend has at least one replica slot, not {self.replicas}"
            raise ValueError(msg)
        if not self.endpoints:
            msg = "no MQTT-over-TLS broker endpoint: pass the mqtts://host:port endpoints from the admin answer"
            raise ValueError(msg)

    @classmethod
    def from_admin(cls, answer: Mapping[str, Any]) -> BackendCredentials:
        """Build them from the JSON answer of ``POST /v1/admin/backends`` (or ``.../rotate``).

        Raises:
            ValueError: The answer lacks a field or holds an invalid value.
        """
        try:
            backend = answer["backend"]
            parsed = tuple(e for e in map(parse_endpoint, answer["endpoints"]) if e is not None)
            # MQTT over TLS only: acknowledging after processing needs the gmqtt link.
            endpoints = select_endpoints(parsed, "mqtts")
            return cls(
                name=backend["name"],
                password=answer["password"],
                role=BackendRole(backend["role"]),
                replicas=int(backend["replicas"]),
                endpoints=endpoints,
            )
        except (KeyError, TypeError) as exc:
            msg = f"not a backend credential answer (missing {exc}); pass the JSON of POST /v1/admin/backends"
            raise ValueError(msg) from exc


@dataclass(frozen=True, kw_only=True)
class FleetMessage:
    """One verified message from a device, handed out by `BackendConsumer`.

    Attributes:
        device_id: The device that signed it.
        message: The verified state, connection status or command response.
        retained: The broker sent its retained copy (on subscription), not a live change.
        redelivered: The broker marked it as a redelivery (MQTT DUP): it may have been
            processed before.
        slot: The replica slot it arrived through (this replica's own or one taken over).
    """

    device_id: str
    message: DeviceState | ConnectionStatus | CommandResponse
    retained: bool
    redelivered: bool
    slot: int


@dataclass
class BackendStats:
    """Counters of one consumer.

    Attributes:
        received: Messages on device topics.
        delivered: Verified messages handed out.
        acknowledged: Handed-out messages acknowledged to the broker.
        invalid: Dropped: unverifiable (bad signature, unknown device), malformed, wrong kind.
        duplicates: Dropped: identical to one already acknowledged.
        takeovers: Times this replica took over another slot's session.
    """

    received: int = 0
    delivered: int = 0
    acknowledged: int = 0
    invalid: int = 0
    duplicates: int = 0
    takeovers: int = 0


_KINDS: Final[dict[TopicKind, type[DeviceState | ConnectionStatus | CommandResponse]]] = {
    TopicKind.STATE: DeviceState,
    TopicKind.CONNECTION: ConnectionStatus,
    TopicKind.RESPONSES: CommandResponse,
}


def _successor(slot: int, count: int, live: set[int]) -> int:
    """The first live slot after ``slot`` in ring order (1..count); ``live`` is never empty."""
    for step in range(1, count + 1):
        candidate = (slot - 1 + step) % count + 1
        if candidate in live:
            return candidate
    return slot


def _identity(message: DeviceState | ConnectionStatus | CommandResponse) -> tuple[str, str, object]:
    if isinstance(message, CommandResponse):
        return (message.device_id, "response", (message.command_id, message.status.value, message.duplicate))
    if isinstance(message, DeviceState):
        return (message.device_id, "state", message.version)
    return (message.device_id, "connection", (message.version, message.online, message.at_ms))


class BackendConsumer:
    """An async iterator of verified fleet messages for one replica of a backend.

    ```python
    async with BackendConsumer(authz_url, credentials, replica=1, ca_file=ca) as consumer:
        async for item in consumer:
            ...  # store it; it is acknowledged when the loop asks for the next one
    ```

    Args:
        authz_url: The authz service (device keys come from ``/v1/backend/devices``).
        credentials: The backend's identity (`BackendCredentials.from_admin`).
        replica: This replica's slot, 1..``credentials.replicas`` (each running replica a
            different one).
        ca_file: CA bundle for the brokers and the authz service (system CAs when None).
        ssl_context: A ready TLS context instead of ``ca_file``.
        reconnect: Backoff, liveness and failover policy of every link.
        session_expiry: Seconds the broker keeps a slot's session (and its queued messages,
            at most mosquitto's ``max_queued_messages``) while nobody holds it.
        takeover_delay: Seconds after a replica's connection dies before its presence clears
            and another replica takes its session over.
        connect_timeout: Bound on entering (first connection of this replica's own slot).
        remember: Acknowledged message identities kept for dropping duplicates.
        on_invalid: Called with the topic and the reason of each message dropped as
            unverifiable (for an alert or a metric); it must not block.
        http_client: The client for the authz service's backend endpoints (its base URL the
            service, its auth the backend's Basic credential); by default one is made from
            ``authz_url``, the credential and the CA. The caller closes its own.
        logger: Where to log (``amora_sync.backend`` by default).
    """

    def __init__(  # noqa: PLR0913 - keyword-only settings
        self,
        authz_url: str,
        credentials: BackendCredentials,
        *,
        replica: int,
        ca_file: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        reconnect: ReconnectPolicy | None = None,
        session_expiry: int = 3600,
        takeover_delay: int = 2,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        remember: int = 100_000,
        on_invalid: Callable[[str, str], None] | None = None,
        http_client: httpx.AsyncClient | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        """Prepare; nothing connects before ``async with``.

        Raises:
            ValueError: ``replica`` is not one of the backend's slots.
        """
        if not 1 <= replica <= credentials.replicas:
            msg = f"replica must be 1..{credentials.replicas} (the backend's slots), not {replica}"
            raise ValueError(msg)
        self._authz_url = authz_url.rstrip("/")
        self._creds = credentials
        self.replica = replica
        self._ca_file = ca_file
        self._ssl_context = ssl_context
        self._policy = reconnect or ReconnectPolicy()
        self._session_expiry = session_expiry
        self._takeover_delay = takeover_delay
        self._connect_timeout = connect_timeout
        self._log = logger or logging.getLogger("amora_sync.backend")
        self._on_invalid = on_invalid
        self.stats = BackendStats()
        self._remember = remember
        self._acked: collections.OrderedDict[tuple[str, str, object], None] = collections.OrderedDict()
        # None wakes an iterator waiting when the consumer closes.
        self._queue: asyncio.Queue[tuple[FleetMessage, asyncio.Future[None]] | None] = asyncio.Queue()
        self._releases: set[asyncio.Task[None]] = set()
        self._previous: tuple[FleetMessage, asyncio.Future[None]] | None = None
        self._kinds = backend_kinds(credentials.role)
        self._presence: dict[int, bool] = {}
        self._loops: dict[int, ConnectionLoop] = {}
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._given_http = http_client
        self._http: httpx.AsyncClient | None = None
        self._keys: DeviceKeyCache | None = None
        self._open = False

    # ------------------------------------------------------------------ lifecycle

    def _tls(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            try:
                context = ssl.create_default_context(cafile=self._ca_file)
            except (OSError, ssl.SSLError) as exc:
                message = (
                    f"cannot load the CA file {self._ca_file}: {exc}; pass ca_file= the PEM bundle of the CA "
                    "that signed the brokers' and the authz service's certificates"
                )
                raise ConnectError(message, attempts=0, last_error=str(exc)) from exc
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            self._ssl_context = context
        return self._ssl_context

    async def __aenter__(self) -> Self:
        """Fetch the device keys, connect this replica's slot, subscribe, announce presence.

        Raises:
            AuthenticationError: The authz service refused the backend credential.
            AuthzUnavailableError: The authz service cannot be reached.
            ConnectError: No broker accepted this slot within ``connect_timeout`` (the
                error names the last cause, e.g. a refused credential).
        """
        account = backend_replica_account(self._creds.name, self.replica)
        http = self._given_http or httpx.AsyncClient(
            base_url=self._authz_url, auth=(account, self._creds.password), verify=self._tls(), timeout=10.0
        )
        self._http = None if self._given_http is not None else http
        try:
            self._keys = DeviceKeyCache(http)
            await self._keys.load()
            self._open = True
            loop = self._start_slot(self.replica)
            try:
                async with asyncio.timeout(self._connect_timeout):
                    await loop.connected.wait()
            except TimeoutError as exc:
                message = (
                    f"slot {account} did not connect within {self._connect_timeout} s "
                    f"({loop.attempts} attempts, last error: {loop.last_error}); check the endpoints and that "
                    "the password is the latest (a rotation replaces it)"
                )
                raise ConnectError(message, attempts=loop.attempts, last_error=loop.last_error) from exc
        except BaseException:
            await self._close()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Acknowledge the last message (only on a normal exit), clear presence, disconnect."""
        if exc_type is None and self._previous is not None:
            self._ack(self._previous)
            self._previous = None
        await self._close()

    async def _close(self) -> None:
        self._open = False
        own = self._loops.get(self.replica)
        if own is not None and own.link is not None and own.link.connected:
            # Gone on purpose: let the others take this slot's session over now, not after the delay.
            own.link.publish(backend_replica_topic(self._creds.name, self.replica), b"", qos=1, retain=True)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await own.link.wait_inflight_drained()
        for slot in list(self._tasks):
            await self._stop_slot(slot)
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if item is not None:
                item[1].cancel()  # not acknowledged: the broker delivers it again
        self._queue.put_nowait(None)
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    # ------------------------------------------------------------------ iteration

    def __aiter__(self) -> Self:
        """Iterate over verified messages."""
        return self

    async def __anext__(self) -> FleetMessage:
        """Acknowledge the previous message, then wait for the next one.

        Raises:
            ClientClosedError: The consumer is not open.
            StopAsyncIteration: It closed while waiting (its ``async with`` block ended).
        """
        if not self._open:
            raise ClientClosedError("the backend consumer is not open: use `async with BackendConsumer(...)`")
        if self._previous is not None:
            self._ack(self._previous)
            self._previous = None
        item = await self._queue.get()
        if item is None:
            raise StopAsyncIteration
        self._previous = item
        return item[0]

    def _ack(self, item: tuple[FleetMessage, asyncio.Future[None]]) -> None:
        message, future = item
        if future.done():
            return  # its link went meanwhile: the broker sends it again
        future.set_result(None)
        self.stats.acknowledged += 1
        self._acked[_identity(message.message)] = None
        while len(self._acked) > self._remember:
            self._acked.popitem(last=False)

    @property
    def slots(self) -> tuple[int, ...]:
        """The slots this replica serves now: its own first, then those it took over."""
        return (self.replica, *sorted(s for s in self._tasks if s != self.replica))

    @property
    def cached_keys(self) -> int:
        """How many devices' keys are cached."""
        return 0 if self._keys is None else len(self._keys)

    # ------------------------------------------------------------------ slots

    def _start_slot(self, slot: int) -> ConnectionLoop:
        account = backend_replica_account(self._creds.name, slot)
        session = Session(
            session_id=account,
            expires_at_ms=0,
            broker=BrokerCredentials(
                endpoints=self._creds.endpoints, username=account, password=self._creds.password, client_id=account
            ),
            grant=b"",
            devices={},
            authz_keys=(),
        )
        own = slot == self.replica
        presence = backend_replica_topic(self._creds.name, slot)
        loop = ConnectionLoop(
            session=lambda: session,
            policy=self._policy if own else _TAKEOVER_POLICY,
            tls=self._tls,
            session_expiry=self._session_expiry,
            keepalive=30,
            on_message=functools.partial(self._on_message, slot),
            stats=ClientStats(),
            logger=self._log,
            will=(presence, b"", self._takeover_delay) if own else None,
            transport="mqtts",  # acknowledging after processing needs the gmqtt link
        )
        loop.prepare = functools.partial(self._subscribe, own=own)
        if own:
            loop.ready = self._announce
        self._loops[slot] = loop
        self._tasks[slot] = asyncio.create_task(loop.run(), name=f"amora-backend[{account}].link")
        if not own:
            self.stats.takeovers += 1
            self._log.warning("amora-backend: slot %s is down; %s takes its session over", slot, self.replica)
        return loop

    def _announce(self, link: Link, _present: bool) -> None:  # noqa: FBT001
        link.publish(backend_replica_topic(self._creds.name, self.replica), _UP, qos=1, retain=True)
        # Slots whose presence has not arrived within the takeover delay (retained ones come
        # right after the subscription) are down, or were never started: serve them.
        asyncio.get_running_loop().call_later(self._takeover_delay, self._rebalance)

    async def _stop_slot(self, slot: int) -> None:
        task, loop = self._tasks.pop(slot, None), self._loops.pop(slot, None)
        if task is None or loop is None:
            return  # already let go (a release and the close met)
        await cancel_and_wait(task)
        await loop.close(end_session=False)

    async def _subscribe(self, link: Link, present: bool, *, own: bool) -> None:  # noqa: FBT001
        topics = [shared_subscription(self._creds.name, kind) for kind in self._kinds]
        if own:
            # Presence is read by this replica's own link only (never shared): every replica sees every slot.
            topics.append(backend_replica_topic(self._creds.name))
        elif present:
            return  # the taken-over session still holds its subscriptions
        granted = await link.subscribe(topics, qos=1, limit=self._policy.liveness_timeout * 2)
        refused = [t for t, code in zip(topics, granted, strict=False) if code >= _REFUSED]
        if refused:
            message = (
                f"the broker refused {refused} for backend {self._creds.name!r} (role {self._creds.role.value}); "
                "the backend's role must allow them: check the role given at creation"
            )
            raise LinkError(message, reason_code=granted[0])

    def _rebalance(self) -> None:
        """Serve exactly the down slots whose next live slot (in ring order) is this replica."""
        if not self._open:
            return
        count = self._creds.replicas
        live = {s for s, up in self._presence.items() if up} | {self.replica}
        for slot in range(1, count + 1):
            if slot == self.replica:
                continue
            wanted = slot not in live and _successor(slot, count, live) == self.replica
            if wanted and slot not in self._tasks:
                self._start_slot(slot)
            elif not wanted and slot in self._tasks:
                self._log.info("amora-backend: slot %s is served by its owner again; %s lets it go", slot, self.replica)
                release = asyncio.get_running_loop().create_task(
                    self._stop_slot(slot), name=f"amora-backend.release-{slot}"
                )
                self._releases.add(release)  # held until done: the loop keeps weak references only
                release.add_done_callback(self._releases.discard)

    # ------------------------------------------------------------------ messages

    async def _on_message(self, slot: int, topic: str, payload: bytes, properties: Mapping[str, Any]) -> None:
        """Verify one message and hand it out; return (= acknowledge) once the application is done with it."""
        if topic.startswith(BACKEND_TOPIC_PREFIX):
            self._presence_changed(topic, payload)
            return
        self.stats.received += 1
        message = await self._verified(topic, payload, properties)
        if message is None:
            return  # dropped: acknowledged, never handed out
        if _identity(message) in self._acked:
            self.stats.duplicates += 1
            return
        delivery = FleetMessage(
            device_id=message.device_id,
            message=message,
            retained=bool(properties.get("retain")),
            redelivered=bool(properties.get("dup")),
            slot=slot,
        )
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.stats.delivered += 1
        self._queue.put_nowait((delivery, future))
        await future  # cancelled when the consumer closes or the link goes: no PUBACK then

    def _presence_changed(self, topic: str, payload: bytes) -> None:
        try:
            slot = int(topic.rsplit("/", 1)[1])
        except ValueError:
            return
        if 1 <= slot <= self._creds.replicas and slot != self.replica:
            self._presence[slot] = payload == _UP
            self._rebalance()

    async def _verified(
        self, topic: str, payload: bytes, properties: Mapping[str, Any]
    ) -> DeviceState | ConnectionStatus | CommandResponse | None:
        try:
            parsed = parse_topic(topic)
        except ProtocolError as exc:
            self._invalid(topic, str(exc))
            return None
        expected = _KINDS.get(parsed.kind)
        if expected is None or parsed.kind not in self._kinds:
            self._invalid(topic, f"{parsed.kind.value} is not a kind this backend reads")
            return None
        keys = self._keys
        assert keys is not None  # noqa: S101 - set before any link starts
        content_types = properties.get("content_type") or [None]
        key = keys.get(parsed.device_id)
        for attempt in range(2):
            if key is not None:
                try:
                    verified = verify_envelope(
                        payload, topic=topic, content_type=content_types[0], key=key, now_ms=now_ms()
                    ).message
                except UnknownKey:
                    pass  # a key id the cache lacks: the device's keys may have changed
                except ProtocolError as exc:
                    self._invalid(topic, f"{type(exc).__name__}: {exc}")
                    return None
                else:
                    if isinstance(verified, expected):
                        return verified
                    self._invalid(topic, f"a {type(verified).__name__} does not belong there")
                    return None
            if attempt == 0:
                key = await self._refreshed(parsed.device_id)
        self._invalid(topic, "no key the authz service lists for that device verifies it")
        return None

    def _invalid(self, topic: str, reason: str) -> None:
        self.stats.invalid += 1
        self._log.warning("amora-backend: dropped a message on %s: %s", topic, reason)
        if self._on_invalid is not None:
            self._on_invalid(topic, reason)

    async def _refreshed(self, device_id: str) -> VerifyKey | None:
        """The device's key fetched again; while the authz service is down, wait for it (the message waits too)."""
        keys = self._keys
        assert keys is not None  # noqa: S101 - set before any link starts
        delay, cap = _AUTHZ_RETRY_S
        while True:
            try:
                return await keys.refresh(device_id)
            except AuthzUnavailableError as exc:
                self._log.warning("amora-backend: %s; retrying in %.1f s", exc, delay)
            except AmoraSyncError as exc:
                self._log.error("amora-backend: cannot refresh %s's key: %s", device_id, exc)
                return None
            # Strategy: a bounded pause between attempts is the point here (no event to wait for).
            await asyncio.sleep(delay)
            delay = min(cap, delay * 2)
