"""Session lists: revocation that reaches the device (logout, unlink, device revocation).

A grant is valid until it expires, and a device cannot ask anyone whether it still is. So
after every change to who may command a device, this module publishes, per touched device,
the signed `amora_protocol.SessionList` of the live sessions whose users are linked to it,
retained on ``amora/devices/{id}/sessions`` of every broker. The agent refuses commands
under a grant whose session is not on the newest list it holds.

The list is derived from the database each time (nothing extra is stored), so a full pass
can always rebuild it; it is published with a broker account of its own whose role may
write only session lists and (to clear retained leftovers) commands. Each publish of a
device's list also clears any retained message on its commands topic: no app's retained
command outlives the change that follows it (a logout, an unlink, an expiry noticed by the
periodic pass).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from typing import TYPE_CHECKING, Final

from gmqtt.mqtt.constants import MQTTv50

from amora_authz._control import client_tls
from amora_authz._gmqtt import PublishWindow, new_client
from amora_protocol import (
    TOPIC_PREFIX,
    SessionList,
    TopicAcl,
    commands_topic,
    issue_session_list,
    now_ms,
    service_account_name,
    sessions_topic,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable, Sequence

    import gmqtt
    import structlog

    from amora_authz._dynsec import BrokerEndpoint
    from amora_authz._store import Store
    from amora_protocol import SigningKey

__all__ = [
    "PUBLISHER_ACCOUNT",
    "PUBLISHER_ROLE",
    "SessionListPublisher",
    "publisher_acls",
]

PUBLISHER_ACCOUNT: Final = service_account_name("session-lists")
"""The broker account that publishes session lists (``svc.``: never a device, user or session)."""
PUBLISHER_ROLE: Final = PUBLISHER_ACCOUNT
"""Its role, named like it (roles of devices and users are ``device:``/``user-device:``)."""


def publisher_acls() -> tuple[TopicAcl, ...]:
    """What the publisher account may do: write every device's session list and commands.

    Commands only to clear retained ones (an empty retained payload); apps and devices have
    no right on the sessions topics beyond a device reading its own.
    """
    return (
        TopicAcl("publishClientSend", f"{TOPIC_PREFIX}+/sessions"),
        TopicAcl("publishClientSend", f"{TOPIC_PREFIX}+/commands"),
    )


_RETRY_S: Final = 5.0
# Unacknowledged session-list publishes per broker: well below the broker's receive maximum
# (mosquitto's `max_inflight_messages`, 20 as shipped; its default is also 20).
_MAX_UNACKNOWLEDGED: Final = 10


class _BrokerLink:
    """One lazily (re)connected publisher connection to one broker."""

    def __init__(
        self,
        endpoint: BrokerEndpoint,
        *,
        password: str,
        logger: structlog.typing.FilteringBoundLogger,
        timeout_s: float,
    ) -> None:
        self.endpoint = endpoint
        self._password = password
        self._log = logger.bind(broker=endpoint.name)
        self.timeout_s = self._timeout_s = timeout_s
        self._client: gmqtt.Client | None = None
        self.window = PublishWindow(_MAX_UNACKNOWLEDGED)
        self._lost = asyncio.Event()
        self._lock = asyncio.Lock()
        self._retry_at = 0.0
        self.generation = 0
        """Counts connections: a new one means the broker may have lost its retained lists."""

    async def client(self) -> gmqtt.Client | None:
        """The live connection, connecting first if needed; ``None`` when the broker is unreachable."""
        async with self._lock:
            if self._client is not None and not self._lost.is_set():
                return self._client
            if time.monotonic() < self._retry_at:
                # Down a moment ago: an API call must not wait for its timeout again; the
                # periodic pass (`publish_all`) retries and republishes everything.
                return None
            await self.close()
            # Several service instances may publish at once: each its own client id.
            # gmqtt's own reconnect off: the next publish connects a fresh client.
            self.window = PublishWindow(_MAX_UNACKNOWLEDGED)
            client = new_client(f"{PUBLISHER_ACCOUNT}-{uuid.uuid4().hex[:12]}", window=self.window)
            client.set_auth_credentials(PUBLISHER_ACCOUNT, self._password)
            lost = asyncio.Event()
            client.on_disconnect = lambda *_args, **_kwargs: lost.set()
            try:
                async with asyncio.timeout(self._timeout_s):
                    await client.connect(
                        self.endpoint.host,
                        self.endpoint.port,
                        ssl=client_tls(self.endpoint),
                        keepalive=30,
                        version=MQTTv50,
                    )
            except Exception as exc:  # noqa: BLE001 - gmqtt raises OSError, SSLError and its own: all mean unreachable
                self._log.warning("session_lists.unreachable", error=repr(exc))
                self._retry_at = time.monotonic() + _RETRY_S
                with contextlib.suppress(Exception):
                    await client.disconnect()
                return None
            self._client, self._lost = client, lost
            self.generation += 1
            return client

    @property
    def alive(self) -> bool:
        """Whether the connection is up."""
        return self._client is not None and not self._lost.is_set()

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.disconnect()


class SessionListPublisher:
    """Publishes each touched device's session list to every broker.

    Args:
        endpoints: the brokers (the same as the fleet's; the publisher account logs in there).
        store: the database the lists are read from.
        signing_key: the grant-signing key (devices verify lists with the keys they trust
            for grants).
        password: the publisher account's broker password.
        logger: structured logger.
        clock_ms: wall clock in ms.
        timeout_s: bound on one connection attempt.
    """

    def __init__(  # noqa: PLR0913 - collaborators, all optional ones keyword-only
        self,
        endpoints: Sequence[BrokerEndpoint],
        store: Store,
        *,
        signing_key: SigningKey,
        password: str,
        logger: structlog.typing.FilteringBoundLogger,
        clock_ms: Callable[[], int] = now_ms,
        timeout_s: float = 5.0,
        extra_sessions: Callable[[], Awaitable[tuple[str, ...]]] | None = None,
    ) -> None:
        """Create the publisher (it connects on first use).

        ``extra_sessions`` names sessions every active device may obey besides its users':
        the support backends' (`amora_authz._backends`).
        """
        self._store = store
        self._extra_sessions = extra_sessions
        self._key = signing_key
        self._log = logger
        self._clock_ms = clock_ms
        self._links = [_BrokerLink(e, password=password, logger=logger, timeout_s=timeout_s) for e in endpoints]
        # What each broker last got from this process, per device (and on which connection):
        # the periodic pass republishes only what changed, or everything after a reconnect.
        self._published: dict[str, tuple[int, dict[str, tuple[str, ...]]]] = {}
        # The connection (generation) of each broker that last got every list (publish_all).
        self._complete_on: dict[str, int] = {}
        self._last_issued = 0
        self.published_total = 0

    def _issued_at(self) -> int:
        # Strictly increasing: a device keeps a list only when it is newer than the one it has.
        self._last_issued = max(self._clock_ms(), self._last_issued + 1)
        return self._last_issued

    async def _with_extra(self, lists: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
        """Add the sessions every active device may obey (support backends) to each active device's list."""
        extra = () if self._extra_sessions is None else await self._extra_sessions()
        if not extra:
            return lists
        active = await self._store.active_devices(lists)
        return {d: tuple(sorted({*ids, *extra})) if d in active else ids for d, ids in lists.items()}

    async def publish(self, *, users: Iterable[str] = (), devices: Iterable[str] = ()) -> None:
        """Publish the lists of ``devices`` and of every device linked to one of ``users``.

        Called after each API change, before its answer: the device has the new list about
        as soon as the caller has the answer. Unreachable brokers are logged and left to the
        next full pass (`publish_all`), which republishes everything after a reconnect.
        """
        wanted = set(devices)
        users = sorted(set(users))
        if users:
            for found in (await self._store.active_devices_of_users(users)).values():
                wanted.update(d.device_id for d in found)
        if not wanted:
            return
        issued = self._issued_at()  # read before the database: a later list saw later rows
        lists = await self._with_extra(await self._store.sessions_of_devices(wanted, now_ms=issued))
        await self._send(lists, issued, only_changed=False)

    async def publish_all(self) -> None:
        """Full pass: publish every device's list that changed (one database read in all).

        After a (re)connection to a broker, every list is published to it again: the broker
        may have restarted without its retained messages.
        """
        issued = self._issued_at()
        lists = await self._with_extra(await self._store.sessions_of_devices(None, now_ms=issued))
        await self._send(lists, issued, only_changed=True)
        for link in self._links:
            if link.alive:
                self._complete_on[link.endpoint.name] = link.generation

    def stale(self) -> bool:
        """Whether a broker may lack some list: down, or reconnected since it last got them all.

        Changes publish their own lists as they happen, so only then is a full `publish_all`
        (a read of every device's sessions) worth its cost.
        """
        return any(
            not link.alive or self._complete_on.get(link.endpoint.name) != link.generation for link in self._links
        )

    async def _send(self, lists: dict[str, tuple[str, ...]], issued: int, *, only_changed: bool) -> None:
        tokens: dict[str, bytes] = {}
        for link in self._links:
            client = await link.client()
            if client is None:
                continue
            generation, sent = self._published.get(link.endpoint.name, (link.generation, {}))
            if generation != link.generation:
                sent = {}
            for device_id, sessions in lists.items():
                if only_changed and sent.get(device_id) == sessions:
                    continue
                token = tokens.get(device_id)
                if token is None:
                    body = SessionList(device_id=device_id, issued_at_ms=issued, sessions=sessions)
                    token = tokens[device_id] = issue_session_list(body, self._key)
                try:
                    # An empty retained payload deletes any retained command left there; it
                    # goes first, so whoever sees the new list knows the leftover is gone.
                    async with asyncio.timeout(link.timeout_s):
                        await link.window.room()
                    client.publish(commands_topic(device_id), b"", qos=1, retain=True)
                    async with asyncio.timeout(link.timeout_s):
                        await link.window.room()
                    client.publish(sessions_topic(device_id), token, qos=1, retain=True)
                except Exception as exc:  # noqa: BLE001 - gmqtt raises assorted errors on a dead socket
                    self._log.warning("session_lists.publish_failed", broker=link.endpoint.name, error=repr(exc))
                    await link.close()
                    break
                sent[device_id] = sessions
                self.published_total += 1
            self._published[link.endpoint.name] = (link.generation, sent)
        if tokens:
            self._log.info("session_lists.published", devices=len(tokens), issued_at_ms=issued)

    async def close(self) -> None:
        """Disconnect from every broker."""
        for link in self._links:
            await link.close()
