"""The dynamic-security control client: one MQTT connection per broker, commands and listings.

Commands go to ``$CONTROL/dynamic-security/v1`` and answers come back on its ``/response``
topic, matched through ``correlationData``. The state model and the planner that decide
*which* commands to send are in `amora_authz._dynsec`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import ssl
import uuid
from typing import TYPE_CHECKING, Any

from gmqtt.mqtt.constants import MQTTv50

from amora_authz._dynsec import AclSpec, ClientSpec, DynsecState, GroupSpec, RoleSpec
from amora_authz._errors import BrokerError
from amora_authz._gmqtt import new_client

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    import gmqtt
    import structlog

    from amora_authz._dynsec import BrokerEndpoint, Scope

__all__ = ["BATCH", "CONTROL_TOPIC", "LIST_PAGE", "RESPONSE_TOPIC", "DynsecClient", "client_tls"]

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = CONTROL_TOPIC + "/response"
BATCH = 100
"""Most dynsec commands sent in one message."""
_READS = ("get", "list")  # dynsec commands that change nothing (and save nothing)
LIST_PAGE = 1000
"""Objects listed per message in a full listing (mosquitto builds each answer in one go)."""


def _parse_role(data: Mapping[str, Any]) -> RoleSpec:
    return RoleSpec(
        name=data["rolename"],
        textname=data.get("textname"),
        acls=frozenset(
            AclSpec(a["acltype"], a["topic"], bool(a["allow"]), int(a.get("priority", 0))) for a in data.get("acls", ())
        ),
    )


def _parse_group(data: Mapping[str, Any]) -> GroupSpec:
    return GroupSpec(
        name=data["groupname"],
        textname=data.get("textname"),
        roles=frozenset(r["rolename"] for r in data.get("roles", ())),
    )


def _parse_client(data: Mapping[str, Any]) -> ClientSpec:
    return ClientSpec(
        username=data["username"],
        clientid=data.get("clientid"),
        password=None,
        textname=data.get("textname"),
        password_tag=data.get("textdescription") or None,
        roles=frozenset(r["rolename"] for r in data.get("roles", ())),
        groups=frozenset(g["groupname"] for g in data.get("groups", ())),
    )


def client_tls(endpoint: BrokerEndpoint) -> ssl.SSLContext | bool:
    """The TLS context for a service connection to ``endpoint`` (``False``: plain TCP)."""
    if not endpoint.tls:
        return False
    context = ssl.create_default_context(cafile=endpoint.ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class DynsecClient:
    """A connection to one broker's ``$CONTROL/dynamic-security/v1`` topic (or another plugin's control topic).

    Connects lazily and reconnects on the next call after a loss (gmqtt's own
    reconnect is disabled: a fresh client per connection keeps no stale state).
    Responses are matched to commands through ``correlationData``.
    """

    def __init__(
        self,
        endpoint: BrokerEndpoint,
        *,
        logger: structlog.typing.FilteringBoundLogger,
        timeout_s: float = 10.0,
        control_topic: str = CONTROL_TOPIC,
        unanswered_hint: str = "",
    ) -> None:
        """Create the client (nothing is sent until the first call).

        Args:
            endpoint: where the broker is and the admin credentials.
            logger: structured logger.
            timeout_s: how long to wait for a response or a connection.
            control_topic: the plugin's control topic: dynamic security's, or the
                ``amora_auth`` plugin's (``$CONTROL/amora-auth/v1``, token mode), which
                speaks the same request and response shape.
            unanswered_hint: appended to the error when commands go unanswered (mosquitto
                drops a ``$CONTROL`` message no plugin handles, so silence may mean the
                plugin is not loaded).
        """
        self._unanswered_hint = unanswered_hint
        self._control_topic = control_topic
        self._response_topic = control_topic + "/response"
        self._what = control_topic.removeprefix("$CONTROL/").split("/")[0]
        self.endpoint = endpoint
        self._log = logger.bind(broker=endpoint.name)
        self._timeout_s = timeout_s
        self._client: gmqtt.Client | None = None
        self._connected = asyncio.Event()
        self._subscribed = asyncio.Event()
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._connect_lock = asyncio.Lock()
        self._ids = itertools.count()
        self._prefix = uuid.uuid4().hex[:8]
        self.connections = 0
        """Connections made so far: a new one may mean the broker restarted (with an older file)."""
        self.on_connection_lost: Callable[[], None] | None = None
        """Called when a live connection drops (not when this client closes it): the broker
        may be restarting, and whoever set it may want to check it again at once."""

    def _ssl(self) -> ssl.SSLContext | bool:
        return client_tls(self.endpoint)

    async def _connect(self) -> None:
        async with self._connect_lock:
            if self._connected.is_set() and self._client is not None:
                return
            await self._drop()
            # gmqtt's own reconnect off: the next command reconnects with a fresh client.
            client = new_client(f"amora-authz-{self._prefix}")
            client.set_auth_credentials(self.endpoint.username, self.endpoint.password)
            client.on_message = self._on_message
            client.on_disconnect = self._on_disconnect
            client.on_subscribe = self._on_subscribe
            self._subscribed.clear()
            try:
                async with asyncio.timeout(self._timeout_s):
                    await client.connect(
                        self.endpoint.host,
                        self.endpoint.port,
                        ssl=self._ssl(),
                        keepalive=30,
                        version=MQTTv50,
                    )
                    client.subscribe(self._response_topic, qos=1)
                    await self._subscribed.wait()
            except Exception as exc:  # gmqtt raises OSError, SSLError and its own errors: all mean unreachable
                await self._close_client(client)
                raise BrokerError(
                    f"cannot connect to broker {self.endpoint.name} at "
                    f"{self.endpoint.host}:{self.endpoint.port}: {exc!r}",
                    broker=self.endpoint.name,
                    code="broker_unreachable",
                ) from exc
            self._client = client
            self._connected.set()
            self.connections += 1
            self._log.info("dynsec.connected", topic=self._control_topic)

    @staticmethod
    async def _close_client(client: gmqtt.Client) -> None:
        try:
            await client.disconnect()
        except Exception:  # noqa: BLE001 - closing a dead connection may fail any way
            return

    async def _drop(self) -> None:
        client, self._client = self._client, None
        self._connected.clear()
        if client is not None:
            await self._close_client(client)

    def _on_subscribe(self, *_args: object) -> None:
        self._subscribed.set()

    def _on_disconnect(self, *_args: object, **_kwargs: object) -> None:
        was_connected = self._connected.is_set()  # `_drop` clears it first: not a loss
        self._connected.clear()
        error = BrokerError(
            f"lost the connection to broker {self.endpoint.name}",
            broker=self.endpoint.name,
            code="broker_unreachable",
        )
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)
        if was_connected and self.on_connection_lost is not None:
            self.on_connection_lost()

    def _on_message(self, _client: object, topic: str, payload: bytes, _qos: int, _properties: object) -> int:
        if topic != self._response_topic:
            return 0
        try:
            document = json.loads(payload)
            responses = document["responses"]
        except (ValueError, KeyError, TypeError):
            self._log.warning("dynsec.bad_response", payload=payload[:200])
            return 0
        for response in responses:
            if not isinstance(response, dict):
                continue
            future = self._pending.get(str(response.get("correlationData")))
            if future is not None and not future.done():
                future.set_result(response)
        return 0

    async def execute(self, commands: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Send commands and return each response (with ``error`` if any), in order.

        Reads go in messages of at most :data:`BATCH` commands; each change goes alone, and
        each message is awaited before the next: mosquitto 2.0 rewrites its whole dynsec
        file per change (50 ms at 10,000 clients) and handles a message in one go, so a
        message of many changes would stall every client of the broker for their sum.

        Raises:
            BrokerError: the broker cannot be reached or did not answer in time.
        """
        batches: list[list[Mapping[str, Any]]] = []
        reads_open = False  # whether the last batch holds reads and may take more
        for command in commands:
            if str(command.get("command", "")).startswith(_READS):
                if not reads_open or len(batches[-1]) >= BATCH:
                    batches.append([])
                    reads_open = True
                batches[-1].append(command)
            else:
                batches.append([command])
                reads_open = False
        responses: list[dict[str, Any]] = []
        for batch in batches:
            responses += await self._execute_batch(batch)
        return responses

    async def _execute_batch(self, commands: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        if not commands:
            return []
        await self._connect()
        client = self._client
        if client is None:  # pragma: no cover - _connect either sets it or raises
            raise BrokerError("not connected", broker=self.endpoint.name)
        loop = asyncio.get_running_loop()
        ids = [f"{self._prefix}-{next(self._ids)}" for _ in commands]
        futures = [loop.create_future() for _ in commands]
        self._pending.update(zip(ids, futures, strict=True))
        try:
            body = [{**c, "correlationData": i} for c, i in zip(commands, ids, strict=True)]
            client.publish(self._control_topic, json.dumps({"commands": body}).encode(), qos=1)
            async with asyncio.timeout(self._timeout_s):
                return list(await asyncio.gather(*futures))
        except TimeoutError as exc:
            await self._drop()
            raise BrokerError(
                f"broker {self.endpoint.name} did not answer {len(commands)} {self._what} commands "
                f"within {self._timeout_s} s{self._unanswered_hint}",
                broker=self.endpoint.name,
                code="broker_timeout",
            ) from exc
        except BrokerError:
            await self._drop()
            raise
        finally:
            for i in ids:
                self._pending.pop(i, None)
            for future in futures:
                # Failed together: mark every outcome as seen, cancel what never came.
                if not future.done():
                    future.cancel()
                elif not future.cancelled():
                    future.exception()

    async def execute_checked(self, commands: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Like :meth:`execute`, but raise when any command reports an error.

        Raises:
            BrokerError: a command failed (code ``dynsec_command_failed``), or the
                broker cannot be reached.
        """
        responses = await self.execute(commands)
        failed = [r for r in responses if r.get("error")]
        if failed:
            detail = "; ".join(f"{r.get('command')}: {r.get('error')}" for r in failed[:5])
            raise BrokerError(
                f"broker {self.endpoint.name} refused {len(failed)} {self._what} commands: {detail}",
                broker=self.endpoint.name,
                code="dynsec_command_failed" if self._control_topic == CONTROL_TOPIC else "control_command_failed",
            )
        return responses

    async def fetch_state(self) -> DynsecState:
        """Return every role, group and client the broker holds, and its default ACL.

        Raises:
            BrokerError: the broker cannot be reached or refused a listing.
        """
        roles = await self._list("listRoles", "roles")
        groups = await self._list("listGroups", "groups")
        clients = await self._list("listClients", "clients")
        (default,) = await self.execute_checked([{"command": "getDefaultACLAccess"}])
        return DynsecState(
            roles={r.name: r for r in map(_parse_role, roles)},
            groups={g.name: g for g in map(_parse_group, groups)},
            clients={c.username: c for c in map(_parse_client, clients)},
            default_acl={a["acltype"]: bool(a["allow"]) for a in default.get("data", {}).get("acls", ())},
        )

    async def fetch_counts(self) -> tuple[int, int, int]:
        """Return how many clients, groups and roles the broker holds (cheap: one of each is listed).

        Raises:
            BrokerError: the broker cannot be reached or refused a listing.
        """
        responses = await self.execute_checked(
            [{"command": kind, "count": 1} for kind in ("listClients", "listGroups", "listRoles")]
        )
        clients, groups, roles = (int(r.get("data", {}).get("totalCount", -1)) for r in responses)
        return clients, groups, roles

    async def _list(self, command: str, key: str) -> list[dict[str, Any]]:
        """Every object of one kind, a page per message: no single answer stalls the broker long."""
        found: list[dict[str, Any]] = []
        while True:
            (response,) = await self.execute_checked(
                [{"command": command, "verbose": True, "count": LIST_PAGE, "offset": len(found)}]
            )
            data = response.get("data", {})
            page = data.get(key, ())
            found.extend(page)
            if len(page) < LIST_PAGE or len(found) >= int(data.get("totalCount", 0)):
                return found

    async def fetch_scope(self, scope: Scope) -> DynsecState:
        """Return the named roles, groups and clients that exist on the broker.

        Raises:
            BrokerError: the broker cannot be reached.
        """
        roles, groups, clients = sorted(scope.roles), sorted(scope.groups), sorted(scope.clients)
        commands: list[dict[str, Any]] = [{"command": "getRole", "rolename": n} for n in roles]
        commands += [{"command": "getGroup", "groupname": n} for n in groups]
        commands += [{"command": "getClient", "username": n} for n in clients]
        responses = await self.execute(commands)
        state = DynsecState()
        for response in responses:
            data = response.get("data")
            if response.get("error") or not isinstance(data, dict):
                continue  # "not found": absent
            if "role" in data:
                role = _parse_role(data["role"])
                state.roles[role.name] = role
            elif "group" in data:
                group = _parse_group(data["group"])
                state.groups[group.name] = group
            elif "client" in data:
                client = _parse_client(data["client"])
                state.clients[client.username] = client
        return state

    async def close(self) -> None:
        """Disconnect (a later call reconnects)."""
        await self._drop()
