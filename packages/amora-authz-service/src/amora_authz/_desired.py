"""What every broker must hold, computed from the database (pure), and the names a change touches.

The desired dynamic-security state follows docs/architecture.md ("Topics and their ACLs"):
a role ``device:{id}`` and a role ``user-device:{id}`` per active device, a client per device
(no password: it logs in with its certificate only), a group ``user:{sub}`` per user holding
``user-device:{id}`` for each linked device, a client per live session in its user's group,
and the service's own session-list publisher. A *scope* names the objects one API change
touches, so that only those are read and reconciled (`amora_authz._fleet`).

In token mode (``[broker] credentials = "token"``) a session is no dynsec client: its broker
token carries its ACL (`amora_authz._brokertoken`). There are then no session clients, no
user groups and no ``user-device:`` roles; devices, their roles, the publisher and the
backends are the same in both modes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from amora_authz._dynsec import (
    DEFAULT_ACL_ACCESS,
    AclSpec,
    ClientSpec,
    DynsecState,
    GroupSpec,
    RoleSpec,
    Scope,
)
from amora_authz._sessionlists import PUBLISHER_ACCOUNT, PUBLISHER_ROLE, publisher_acls
from amora_protocol import device_acls, device_role, user_device_acls, user_device_role, user_group

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

    from amora_authz._store import Device, Link, Session

__all__ = [
    "desired_state",
    "restrict",
    "scope_for_device",
    "scope_for_link",
    "scope_for_session",
]


def scope_for_session(session_id: str, user_sub: str, devices: Iterable[str] = ()) -> Scope:
    """Names touched by creating or deleting a session."""
    return Scope(
        clients=frozenset({session_id}),
        groups=frozenset({user_group(user_sub)}),
        roles=frozenset(user_device_role(d) for d in devices),
    )


def scope_for_link(user_sub: str, device_id: str) -> Scope:
    """Names touched by linking or unlinking a user and a device."""
    return Scope(groups=frozenset({user_group(user_sub)}), roles=frozenset({user_device_role(device_id)}))


def scope_for_device(device_id: str, users: Iterable[str] = ()) -> Scope:
    """Names touched by registering or revoking a device."""
    return Scope(
        clients=frozenset({device_id}),
        roles=frozenset({device_role(device_id), user_device_role(device_id)}),
        groups=frozenset(user_group(u) for u in users),
    )


def _acls(acls: Iterable[tuple[str, str, bool]]) -> frozenset[AclSpec]:
    return frozenset(AclSpec(acltype, topic, allow) for acltype, topic, allow in acls)


def desired_state(
    devices: Sequence[Device],
    links: Sequence[Link],
    sessions: Sequence[Session],
    *,
    password_for: Callable[[str], str],
    session_clients: bool = True,
) -> DynsecState:
    """Compute what every broker must hold.

    Args:
        devices: active devices.
        links: user-device links (links to devices not in ``devices`` are ignored).
        sessions: live sessions.
        password_for: the broker password of a session id.
        session_clients: False in token mode: ``links`` and ``sessions`` are then ignored
            (no session clients, user groups or ``user-device:`` roles).

    Returns:
        The desired dynsec state, default ACL included.
    """
    state = DynsecState(default_acl=dict(DEFAULT_ACL_ACCESS))
    active = {d.device_id for d in devices}
    if not session_clients:
        links, sessions = (), ()
    for device_id in sorted(active):
        state.roles[device_role(device_id)] = RoleSpec(name=device_role(device_id), acls=_acls(device_acls(device_id)))
        if session_clients:
            state.roles[user_device_role(device_id)] = RoleSpec(
                name=user_device_role(device_id), acls=_acls(user_device_acls(device_id))
            )
        state.clients[device_id] = ClientSpec(
            username=device_id,
            clientid=device_id,
            password=None,
            roles=frozenset({device_role(device_id)}),
        )
    roles_by_user: dict[str, set[str]] = {}
    for link in links:
        if link.device_id in active:
            roles_by_user.setdefault(link.user_sub, set()).add(user_device_role(link.device_id))
    for session in sessions:
        roles_by_user.setdefault(session.user_sub, set())
    for user, roles in roles_by_user.items():
        state.groups[user_group(user)] = GroupSpec(name=user_group(user), roles=frozenset(roles))
    for session in sessions:
        state.clients[session.session_id] = ClientSpec(
            username=session.session_id,
            clientid=session.session_id,
            password=password_for(session.session_id),
            groups=frozenset({user_group(session.user_sub)}),
        )
    # The service's own account for session lists (revocation that reaches the device); its
    # password is derived like a session's, from a name no session id can take.
    state.roles[PUBLISHER_ROLE] = RoleSpec(name=PUBLISHER_ROLE, acls=_acls(publisher_acls()))
    state.clients[PUBLISHER_ACCOUNT] = ClientSpec(
        username=PUBLISHER_ACCOUNT,
        clientid=None,
        password=password_for(PUBLISHER_ACCOUNT),
        roles=frozenset({PUBLISHER_ROLE}),
    )
    return state


def restrict(state: DynsecState, scope: Scope) -> DynsecState:
    return DynsecState(
        roles={k: v for k, v in state.roles.items() if k in scope.roles},
        groups={k: v for k, v in state.groups.items() if k in scope.groups},
        clients={k: v for k, v in state.clients.items() if k in scope.clients},
    )
