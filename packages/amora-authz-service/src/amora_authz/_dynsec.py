"""mosquitto dynamic-security over MQTT: the control client, the state model, and the planner.

The planner is pure: given the desired state (from the database) and the state a
broker reports, it returns the dynsec commands that make the broker match, restricted
to a *scope* of names when a single API call changed a few objects. Everything the
service creates carries ``textname == MANAGED`` so that reconciliation touches only
what it owns: an object it did not create is never modified, adopted or deleted, even
when it bears a name the database wants (it is reported by :func:`foreign_names`).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import ssl
import uuid
from typing import TYPE_CHECKING, Any

import msgspec
from gmqtt.mqtt.constants import MQTTv50

from amora_authz._errors import BrokerError
from amora_authz._gmqtt import new_client

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

    import gmqtt
    import structlog

__all__ = [
    "MANAGED",
    "AclSpec",
    "BrokerEndpoint",
    "ClientSpec",
    "DynsecClient",
    "DynsecState",
    "ForeignNames",
    "GroupSpec",
    "RoleSpec",
    "Scope",
    "client_tls",
    "foreign_names",
    "plan",
]

MANAGED = "managed-by:amora-authz"
"""The ``textname`` on every dynsec object this service owns (its ownership marker).

Deliberately not a plausible account label: an operator who names their own account
``amora-authz`` must not hand it to the reconciler by writing that into its textname.
"""

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = CONTROL_TOPIC + "/response"
BATCH = 100
"""Most dynsec commands sent in one message."""

# Deny by default. Unsubscribing stays allowed: it cannot leak anything, and
# denying it only breaks clients that tidy up after a revoked subscription.
DEFAULT_ACL_ACCESS: Mapping[str, bool] = {
    "publishClientSend": False,
    "publishClientReceive": False,
    "subscribe": False,
    "unsubscribe": True,
}


class BrokerEndpoint(msgspec.Struct, frozen=True, kw_only=True):
    """How the service reaches one broker's dynsec control topic.

    Attributes:
        name: label used in logs, metrics and errors (``primary``, ``standby``).
        host: broker host.
        port: a password listener (TLS unless ``tls`` is false).
        username: the dynsec admin account.
        password: its password.
        ca_file: CA bundle for the broker's server certificate (system CAs when None).
        tls: whether the listener speaks TLS.
        dynsec_file: the broker's dynsec JSON file, when it is readable from here; used
            to check that the broker persists what it is told.
        client_endpoints: the endpoints handed to apps for this broker
            (``mqtts://host:port``, ``wss://host:port``).
    """

    name: str
    host: str
    port: int
    username: str
    password: str
    ca_file: str | None = None
    tls: bool = True
    dynsec_file: str | None = None
    client_endpoints: tuple[str, ...] = ()


class AclSpec(msgspec.Struct, frozen=True, order=True):
    """One ACL entry of a role."""

    acltype: str
    topic: str
    allow: bool
    priority: int = 0


class RoleSpec(msgspec.Struct, frozen=True, kw_only=True):
    """A dynsec role."""

    name: str
    acls: frozenset[AclSpec]
    textname: str | None = MANAGED


class GroupSpec(msgspec.Struct, frozen=True, kw_only=True):
    """A dynsec group."""

    name: str
    roles: frozenset[str]
    textname: str | None = MANAGED


class ClientSpec(msgspec.Struct, frozen=True, kw_only=True):
    """A dynsec client (broker account).

    Attributes:
        username: the account name (device id, or session id).
        clientid: the only MQTT client id it may use (None: any).
        password: the password to create it with (None: cannot log in with one).
        roles: role names held directly.
        groups: group names it belongs to.
        textname: ownership marker.
    """

    username: str
    clientid: str | None
    password: str | None
    roles: frozenset[str] = frozenset()
    groups: frozenset[str] = frozenset()
    textname: str | None = MANAGED


class DynsecState(msgspec.Struct, kw_only=True):
    """A set of roles, groups and clients (desired, or as a broker reports it)."""

    roles: dict[str, RoleSpec] = msgspec.field(default_factory=dict)
    groups: dict[str, GroupSpec] = msgspec.field(default_factory=dict)
    clients: dict[str, ClientSpec] = msgspec.field(default_factory=dict)
    default_acl: dict[str, bool] | None = None


class Scope(msgspec.Struct, frozen=True, kw_only=True):
    """The names one change touches (reconcile only these)."""

    roles: frozenset[str] = frozenset()
    groups: frozenset[str] = frozenset()
    clients: frozenset[str] = frozenset()

    def __or__(self, other: Scope) -> Scope:
        """Union of two scopes."""
        return Scope(
            roles=self.roles | other.roles,
            groups=self.groups | other.groups,
            clients=self.clients | other.clients,
        )


def _acl_dicts(acls: Iterable[AclSpec]) -> list[dict[str, Any]]:
    return [{"acltype": a.acltype, "topic": a.topic, "allow": a.allow, "priority": a.priority} for a in sorted(acls)]


def _names(desired: Mapping[str, Any], actual: Mapping[str, Any], scope: frozenset[str] | None) -> list[str]:
    names = set(desired)
    names.update(n for n, v in actual.items() if v.textname == MANAGED)
    if scope is not None:
        names &= scope
    return sorted(names)


class ForeignNames(msgspec.Struct, frozen=True, kw_only=True):
    """Names the database wants that the broker holds as objects this service does not own."""

    roles: frozenset[str] = frozenset()
    groups: frozenset[str] = frozenset()
    clients: frozenset[str] = frozenset()

    def __bool__(self) -> bool:
        """Whether any name is taken."""
        return bool(self.roles or self.groups or self.clients)

    def names(self) -> list[str]:
        """Every taken name, prefixed with its kind (``client:amora-admin``)."""
        return sorted(
            [f"role:{n}" for n in self.roles]
            + [f"group:{n}" for n in self.groups]
            + [f"client:{n}" for n in self.clients]
        )


def foreign_names(desired: DynsecState, actual: DynsecState) -> ForeignNames:
    """The desired names that ``actual`` holds as objects without the ownership marker.

    The planner leaves those objects alone (no adoption), so the desired state cannot
    be reached on that broker until an operator renames or removes them.
    """
    return ForeignNames(
        roles=frozenset(n for n in desired.roles if n in actual.roles and actual.roles[n].textname != MANAGED),
        groups=frozenset(n for n in desired.groups if n in actual.groups and actual.groups[n].textname != MANAGED),
        clients=frozenset(n for n in desired.clients if n in actual.clients and actual.clients[n].textname != MANAGED),
    )


def plan(  # noqa: C901, PLR0912 - one linear pass per object kind reads best
    desired: DynsecState, actual: DynsecState, *, scope: Scope | None = None
) -> list[dict[str, Any]]:
    """Return the dynsec commands that turn ``actual`` into ``desired``.

    Objects in ``actual`` without the ownership marker are never touched, whatever
    their name: a desired object whose name is taken by one is skipped, and so is
    anything that would reference it (a client in a foreign group, a foreign role
    added to a group), since that would hand the foreign object's rights around.

    Args:
        desired: the state the database asks for.
        actual: the state the broker reports (objects not found are simply absent).
        scope: when given, only these names are compared (and ``actual`` need only
            hold them); the default ACL is then left alone.

    Returns:
        Commands in a safe order: roles, groups, clients created or changed first,
        then stale clients, groups and roles deleted.
    """
    create: list[dict[str, Any]] = []
    delete: list[dict[str, Any]] = []
    foreign = foreign_names(desired, actual)

    if scope is None and desired.default_acl is not None:
        for acltype, allow in sorted(desired.default_acl.items()):
            if (actual.default_acl or {}).get(acltype) != allow:
                create.append(
                    {
                        "command": "setDefaultACLAccess",
                        "acls": [{"acltype": acltype, "allow": allow}],
                    }
                )

    deleted_roles: list[dict[str, Any]] = []
    for name in _names(desired.roles, actual.roles, None if scope is None else scope.roles):
        want, have = desired.roles.get(name), actual.roles.get(name)
        if want is not None and have is None:
            create.append(
                {
                    "command": "createRole",
                    "rolename": name,
                    "textname": MANAGED,
                    "acls": _acl_dicts(want.acls),
                }
            )
        elif want is not None and have is not None:
            if name in foreign.roles:
                continue
            create.extend(
                {"command": "removeRoleACL", "rolename": name, "acltype": a.acltype, "topic": a.topic}
                for a in sorted(have.acls - want.acls)
            )
            create.extend(
                {"command": "addRoleACL", "rolename": name, **_acl_dicts([a])[0]} for a in sorted(want.acls - have.acls)
            )
        elif have is not None:
            deleted_roles.append({"command": "deleteRole", "rolename": name})

    deleted_groups: list[dict[str, Any]] = []
    for name in _names(desired.groups, actual.groups, None if scope is None else scope.groups):
        want_g, have_g = desired.groups.get(name), actual.groups.get(name)
        if want_g is not None and have_g is None:
            create.append({"command": "createGroup", "groupname": name, "textname": MANAGED})
            create.extend(
                {"command": "addGroupRole", "groupname": name, "rolename": r}
                for r in sorted(want_g.roles - foreign.roles)
            )
        elif want_g is not None and have_g is not None:
            if name in foreign.groups:
                continue
            create.extend(
                {"command": "removeGroupRole", "groupname": name, "rolename": r}
                for r in sorted(have_g.roles - want_g.roles)
            )
            create.extend(
                {"command": "addGroupRole", "groupname": name, "rolename": r}
                for r in sorted(want_g.roles - have_g.roles - foreign.roles)
            )
        elif have_g is not None:
            deleted_groups.append({"command": "deleteGroup", "groupname": name})

    for name in _names(desired.clients, actual.clients, None if scope is None else scope.clients):
        want_c, have_c = desired.clients.get(name), actual.clients.get(name)
        if want_c is not None and (
            name in foreign.clients or want_c.roles & foreign.roles or want_c.groups & foreign.groups
        ):
            continue
        if want_c is not None and have_c is None:
            command: dict[str, Any] = {
                "command": "createClient",
                "username": name,
                "textname": MANAGED,
                "roles": [{"rolename": r} for r in sorted(want_c.roles)],
                "groups": [{"groupname": g} for g in sorted(want_c.groups)],
            }
            if want_c.clientid is not None:
                command["clientid"] = want_c.clientid
            if want_c.password is not None:
                command["password"] = want_c.password
            create.append(command)
        elif want_c is not None and have_c is not None:
            if have_c.clientid != want_c.clientid:
                modify: dict[str, Any] = {
                    "command": "modifyClient",
                    "username": name,
                    "textname": MANAGED,
                    "clientid": want_c.clientid or "",
                }
                create.append(modify)
            create.extend(
                {"command": "removeClientRole", "username": name, "rolename": r}
                for r in sorted(have_c.roles - want_c.roles)
            )
            create.extend(
                {"command": "addClientRole", "username": name, "rolename": r}
                for r in sorted(want_c.roles - have_c.roles)
            )
            create.extend(
                {"command": "removeGroupClient", "groupname": g, "username": name}
                for g in sorted(have_c.groups - want_c.groups)
            )
            create.extend(
                {"command": "addGroupClient", "groupname": g, "username": name}
                for g in sorted(want_c.groups - have_c.groups)
            )
        elif have_c is not None:
            delete.append({"command": "deleteClient", "username": name})

    return create + delete + deleted_groups + deleted_roles


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
    """A connection to one broker's ``$CONTROL/dynamic-security/v1`` topic.

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
    ) -> None:
        """Create the client (nothing is sent until the first call).

        Args:
            endpoint: where the broker is and the admin credentials.
            logger: structured logger.
            timeout_s: how long to wait for a response or a connection.
        """
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
                    client.subscribe(RESPONSE_TOPIC, qos=1)
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
            self._log.info("dynsec.connected")

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
        self._connected.clear()
        error = BrokerError(
            f"lost the connection to broker {self.endpoint.name}",
            broker=self.endpoint.name,
            code="broker_unreachable",
        )
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)

    def _on_message(self, _client: object, topic: str, payload: bytes, _qos: int, _properties: object) -> int:
        if topic != RESPONSE_TOPIC:
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

        Commands go in messages of at most :data:`BATCH` commands, each awaited before
        the next: mosquitto rewrites its whole dynsec file per command (tens of ms at
        thousands of clients), so one huge message would outlast any sane timeout.

        Raises:
            BrokerError: the broker cannot be reached or did not answer in time.
        """
        responses: list[dict[str, Any]] = []
        for start in range(0, len(commands), BATCH):
            responses += await self._execute_batch(commands[start : start + BATCH])
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
            client.publish(CONTROL_TOPIC, json.dumps({"commands": body}).encode(), qos=1)
            async with asyncio.timeout(self._timeout_s):
                return list(await asyncio.gather(*futures))
        except TimeoutError as exc:
            await self._drop()
            raise BrokerError(
                f"broker {self.endpoint.name} did not answer {len(commands)} dynsec commands "
                f"within {self._timeout_s} s",
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
                f"broker {self.endpoint.name} refused {len(failed)} dynsec commands: {detail}",
                broker=self.endpoint.name,
                code="dynsec_command_failed",
            )
        return responses

    async def fetch_state(self) -> DynsecState:
        """Return every role, group and client the broker holds, and its default ACL.

        Raises:
            BrokerError: the broker cannot be reached or refused a listing.
        """
        responses = await self.execute_checked(
            [
                {"command": "listRoles", "verbose": True, "count": -1},
                {"command": "listGroups", "verbose": True, "count": -1},
                {"command": "listClients", "verbose": True, "count": -1},
                {"command": "getDefaultACLAccess"},
            ]
        )
        roles, groups, clients, default = (r.get("data", {}) for r in responses)
        return DynsecState(
            roles={r.name: r for r in map(_parse_role, roles.get("roles", ()))},
            groups={g.name: g for g in map(_parse_group, groups.get("groups", ()))},
            clients={c.username: c for c in map(_parse_client, clients.get("clients", ()))},
            default_acl={a["acltype"]: bool(a["allow"]) for a in default.get("acls", ())},
        )

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
