"""mosquitto dynamic-security: the state model and the planner (the client is `amora_authz._control`).

The planner is pure: given the desired state (from the database) and the state a
broker reports, it returns the dynsec commands that make the broker match, restricted
to a *scope* of names when a single API call changed a few objects. Everything the
service creates carries ``textname == MANAGED`` so that reconciliation touches only
what it owns: an object it did not create is never modified, adopted or deleted, even
when it bears a name the database wants (it is reported by :func:`foreign_names`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping


__all__ = [
    "MANAGED",
    "AclSpec",
    "BrokerEndpoint",
    "ClientSpec",
    "DynsecState",
    "ForeignNames",
    "GroupSpec",
    "RoleSpec",
    "Scope",
    "foreign_names",
    "plan",
]

MANAGED = "managed-by:amora-authz"
"""The ``textname`` on every dynsec object this service owns (its ownership marker).

Deliberately not a plausible account label: an operator who names their own account
``amora-authz`` must not hand it to the reconciler by writing that into its textname.
"""

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
        password_tag: names the password's version (kept in the client's ``textdescription``):
            dynsec never reports a password, so a rotated one is set again wherever the tag
            differs (backend accounts; None for passwords that never change).
    """

    username: str
    clientid: str | None
    password: str | None
    roles: frozenset[str] = frozenset()
    groups: frozenset[str] = frozenset()
    textname: str | None = MANAGED
    password_tag: str | None = None


class DynsecState(msgspec.Struct, kw_only=True):
    """A set of roles, groups and clients (desired, or as a broker reports it)."""

    roles: dict[str, RoleSpec] = msgspec.field(default_factory=dict)
    groups: dict[str, GroupSpec] = msgspec.field(default_factory=dict)
    clients: dict[str, ClientSpec] = msgspec.field(default_factory=dict)
    default_acl: dict[str, bool] | None = None


class Scope(msgspec.Struct, frozen=True, kw_only=True):
    """The names one change touches (reconcile only these).

    Attributes:
        roles: dynsec role names.
        groups: dynsec group names.
        clients: dynsec client names.
        revoked: token mode: session usernames whose revocation every broker must hold
            (`amora_authz._revocations`); tracked, retried and reported like the names.
    """

    roles: frozenset[str] = frozenset()
    groups: frozenset[str] = frozenset()
    clients: frozenset[str] = frozenset()
    revoked: frozenset[str] = frozenset()

    def __or__(self, other: Scope) -> Scope:
        """Union of two scopes."""
        return Scope(
            roles=self.roles | other.roles,
            groups=self.groups | other.groups,
            clients=self.clients | other.clients,
            revoked=self.revoked | other.revoked,
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


def _password_rotation(name: str, want: ClientSpec, have: ClientSpec) -> list[dict[str, Any]]:
    """Set a rotated password again (its tag differs); dynsec then disconnects the client."""
    if want.password_tag == have.password_tag or want.password is None:
        return []
    return [
        {"command": "setClientPassword", "username": name, "password": want.password},
        {"command": "modifyClient", "username": name, "textdescription": want.password_tag or ""},
    ]


def plan(  # noqa: C901, PLR0912, PLR0915 - one linear pass per object kind reads best
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
            # Roles inline: mosquitto 2.0 rewrites its whole file per command, so a new
            # user's group costs one rewrite, not one plus one per linked device.
            create.append(
                {
                    "command": "createGroup",
                    "groupname": name,
                    "textname": MANAGED,
                    "roles": [{"rolename": r} for r in sorted(want_g.roles - foreign.roles)],
                }
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
            if want_c.password_tag is not None:
                command["textdescription"] = want_c.password_tag
            create.append(command)
        elif want_c is not None and have_c is not None:
            create.extend(_password_rotation(name, want_c, have_c))
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
