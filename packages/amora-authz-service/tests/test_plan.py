"""The reconciliation planner (pure): desired state from the database vs. a broker's state."""

from __future__ import annotations

from amora_authz._desired import desired_state
from amora_authz._dynsec import (
    MANAGED,
    AclSpec,
    ClientSpec,
    DynsecState,
    GroupSpec,
    RoleSpec,
    Scope,
    foreign_names,
    plan,
)
from amora_authz._sessionlists import PUBLISHER_ACCOUNT, PUBLISHER_ROLE
from amora_authz._store import Device, Link, Session
from amora_protocol import device_acls, user_device_acls


def state() -> DynsecState:
    devices = [
        Device(device_id=d, signing_key=b"s" * 32, encryption_key=b"e" * 32, created_at_ms=1) for d in ("p1", "p2")
    ]
    links = [
        Link(user_sub="alice", device_id="p1", created_at_ms=1),
        Link(user_sub="alice", device_id="p2", created_at_ms=1),
        Link(user_sub="bob", device_id="p2", created_at_ms=1),
        Link(user_sub="bob", device_id="gone", created_at_ms=1),  # not an active device
    ]
    sessions = [
        Session(
            session_id="sess.1",
            user_sub="alice",
            client_name=None,
            signing_key=b"k" * 32,
            encryption_key=b"x" * 32,
            created_at_ms=1,
            expires_at_ms=10**13,
        ),
        Session(
            session_id="sess.2",
            user_sub="carol",  # no devices: a group with no roles
            client_name=None,
            signing_key=b"k" * 32,
            encryption_key=b"x" * 32,
            created_at_ms=1,
            expires_at_ms=10**13,
        ),
    ]
    return desired_state(devices, links, sessions, password_for=lambda sid: f"pw-{sid}")


def apply(actual: DynsecState, commands: list[dict[str, object]]) -> DynsecState:  # noqa: C901
    """A tiny model of the dynsec plugin, enough to check that plans converge."""
    roles, groups, clients = dict(actual.roles), dict(actual.groups), dict(actual.clients)
    default = dict(actual.default_acl or {})
    for c in commands:
        kind = c["command"]
        if kind == "setDefaultACLAccess":
            for acl in c["acls"]:  # type: ignore[attr-defined]
                default[acl["acltype"]] = acl["allow"]
        elif kind == "createRole":
            acls = frozenset(AclSpec(a["acltype"], a["topic"], a["allow"]) for a in c["acls"])  # type: ignore[attr-defined]
            roles[str(c["rolename"])] = RoleSpec(name=str(c["rolename"]), acls=acls)
        elif kind == "deleteRole":
            del roles[str(c["rolename"])]
        elif kind == "createGroup":
            inline = frozenset(str(r["rolename"]) for r in c.get("roles", ()))  # type: ignore[attr-defined]
            groups[str(c["groupname"])] = GroupSpec(name=str(c["groupname"]), roles=inline)
        elif kind in ("addGroupRole", "removeGroupRole"):
            g = groups[str(c["groupname"])]
            change = {str(c["rolename"])}
            new = g.roles | change if kind == "addGroupRole" else g.roles - change
            groups[g.name] = GroupSpec(name=g.name, roles=new, textname=g.textname)
        elif kind == "deleteGroup":
            del groups[str(c["groupname"])]
        elif kind == "createClient":
            clients[str(c["username"])] = ClientSpec(
                username=str(c["username"]),
                clientid=c.get("clientid"),  # type: ignore[arg-type]
                password=None,
                roles=frozenset(r["rolename"] for r in c["roles"]),  # type: ignore[attr-defined]
                groups=frozenset(g["groupname"] for g in c["groups"]),  # type: ignore[attr-defined]
            )
        elif kind == "deleteClient":
            del clients[str(c["username"])]
        else:
            raise AssertionError(f"unexpected command {kind}")
    return DynsecState(roles=roles, groups=groups, clients=clients, default_acl=default)


def test_desired_state_follows_the_design() -> None:
    want = state()
    assert set(want.roles) == {"device:p1", "device:p2", "user-device:p1", "user-device:p2", PUBLISHER_ROLE}
    assert want.roles["device:p1"].acls == frozenset(AclSpec(a.acltype, a.topic, a.allow) for a in device_acls("p1"))
    assert want.roles["user-device:p2"].acls == frozenset(
        AclSpec(a.acltype, a.topic, a.allow) for a in user_device_acls("p2")
    )
    assert want.groups["user:alice"].roles == {"user-device:p1", "user-device:p2"}
    assert want.groups["user:bob"].roles == {"user-device:p2"}
    assert want.groups["user:carol"].roles == frozenset()
    device = want.clients["p1"]
    assert (device.clientid, device.password, device.roles) == ("p1", None, frozenset({"device:p1"}))
    session = want.clients["sess.1"]
    assert (session.clientid, session.password, session.groups) == (
        "sess.1",
        "pw-sess.1",
        frozenset({"user:alice"}),
    )
    # The service's session-list account writes session lists and (to clear them) commands only.
    publisher = want.clients[PUBLISHER_ACCOUNT]
    assert (publisher.clientid, publisher.password, publisher.roles, publisher.groups) == (
        None,
        f"pw-{PUBLISHER_ACCOUNT}",
        frozenset({PUBLISHER_ROLE}),
        frozenset(),
    )
    assert want.roles[PUBLISHER_ROLE].acls == frozenset(
        {
            AclSpec("publishClientSend", "amora/devices/+/sessions", allow=True),
            AclSpec("publishClientSend", "amora/devices/+/commands", allow=True),
        }
    )
    assert want.default_acl == {
        "publishClientSend": False,
        "publishClientReceive": False,
        "subscribe": False,
        "unsubscribe": True,
    }


def test_full_plan_converges_and_is_then_empty() -> None:
    want = state()
    commands = plan(want, DynsecState())
    kinds = [c["command"] for c in commands]
    # Roles before the groups and clients that use them.
    assert kinds.index("createRole") < kinds.index("createGroup") < kinds.index("createClient")
    # A new group carries its roles and a new client its groups: one command (one rewrite
    # of mosquitto's file) each, whatever the number of devices.
    assert "addGroupRole" not in kinds
    assert "addGroupClient" not in kinds
    after = apply(DynsecState(), commands)
    assert plan(want, after) == []


def test_stale_managed_objects_are_deleted_but_foreign_ones_are_kept() -> None:
    want = state()
    actual = apply(DynsecState(), plan(want, DynsecState()))
    actual.clients["sess.old"] = ClientSpec(
        username="sess.old", clientid="sess.old", password=None, groups=frozenset({"user:dave"})
    )
    actual.groups["user:dave"] = GroupSpec(name="user:dave", roles=frozenset())
    actual.roles["device:old"] = RoleSpec(name="device:old", acls=frozenset())
    actual.clients["amora-admin"] = ClientSpec(
        username="amora-admin", clientid=None, password=None, textname="admin", roles=frozenset({"admin"})
    )
    actual.roles["admin"] = RoleSpec(name="admin", acls=frozenset(), textname=None)
    commands = plan(want, actual)
    assert commands == [
        {"command": "deleteClient", "username": "sess.old"},
        {"command": "deleteGroup", "groupname": "user:dave"},
        {"command": "deleteRole", "rolename": "device:old"},
    ]


def test_drifted_objects_are_corrected() -> None:
    want = state()
    actual = apply(DynsecState(), plan(want, DynsecState()))
    actual.groups["user:alice"] = GroupSpec(name="user:alice", roles=frozenset({"user-device:p1", "device:p2"}))
    role = actual.roles["user-device:p1"]
    extra = AclSpec("subscribePattern", "#", True)
    actual.roles["user-device:p1"] = RoleSpec(name=role.name, acls=role.acls | {extra})
    commands = plan(want, actual)
    assert {
        "command": "removeRoleACL",
        "rolename": "user-device:p1",
        "acltype": "subscribePattern",
        "topic": "#",
    } in commands
    assert {"command": "removeGroupRole", "groupname": "user:alice", "rolename": "device:p2"} in commands
    assert {"command": "addGroupRole", "groupname": "user:alice", "rolename": "user-device:p2"} in commands


def test_an_unmanaged_object_with_a_desired_name_is_never_adopted() -> None:
    want = state()
    actual = apply(DynsecState(), plan(want, DynsecState()))
    # An operator's account that happens to bear a device's name (the takeover of issue
    # #11: the reconciler used to strip its roles and hand it the device role).
    actual.clients["p1"] = ClientSpec(
        username="p1", clientid=None, password=None, roles=frozenset({"admin"}), textname="operator"
    )
    assert plan(want, actual) == []
    assert foreign_names(want, actual).names() == ["client:p1"]


def test_nothing_is_attached_to_a_foreign_group_or_role() -> None:
    want = state()
    actual = apply(DynsecState(), plan(want, DynsecState()))
    # Foreign objects named like alice's group and p2's device role: no session joins
    # that group, no group gets that role, no device client gets it.
    actual.groups["user:alice"] = GroupSpec(name="user:alice", roles=frozenset({"admin"}), textname=None)
    actual.roles["user-device:p2"] = RoleSpec(name="user-device:p2", acls=frozenset(), textname=None)
    del actual.clients["sess.1"]
    commands = plan(want, actual)
    assert commands == []
    assert foreign_names(want, actual).names() == ["group:user:alice", "role:user-device:p2"]


def test_scoped_plan_touches_only_the_scope() -> None:
    want = state()
    actual = apply(DynsecState(), plan(want, DynsecState()))
    # Unlink alice from p1 in the database; something unrelated drifted meanwhile.
    want.groups["user:alice"] = GroupSpec(name="user:alice", roles=frozenset({"user-device:p2"}))
    del actual.clients["p2"]
    scope = Scope(groups=frozenset({"user:alice"}), roles=frozenset({"user-device:p1"}))
    restricted = DynsecState(
        roles={k: v for k, v in actual.roles.items() if k in scope.roles},
        groups={k: v for k, v in actual.groups.items() if k in scope.groups},
    )
    wanted = DynsecState(
        roles={k: v for k, v in want.roles.items() if k in scope.roles},
        groups={k: v for k, v in want.groups.items() if k in scope.groups},
    )
    assert plan(wanted, restricted, scope=scope) == [
        {"command": "removeGroupRole", "groupname": "user:alice", "rolename": "user-device:p1"}
    ]
    # The full pass repairs the drift too.
    assert {
        "command": "createClient",
        "username": "p2",
        "textname": MANAGED,
        "roles": [{"rolename": "device:p2"}],
        "groups": [],
        "clientid": "p2",
    } in plan(want, actual)
