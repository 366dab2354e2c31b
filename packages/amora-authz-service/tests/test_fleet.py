"""The fleet's desired state: a scoped read of the store equals the full one on that scope."""

from __future__ import annotations

import structlog

from amora_authz._desired import restrict, scope_for_device, scope_for_link, scope_for_session
from amora_authz._dynsec import Scope
from amora_authz._fleet import BrokerFleet
from amora_authz._store import Device, Session, Store


async def test_scoped_desired_state_matches_the_full_one(store: Store) -> None:
    for device_id in ("p1", "p2", "p3"):
        await store.add_device(
            Device(
                device_id=device_id,
                signing_key=b"s" * 32,
                encryption_key=b"e" * 32,
                created_at_ms=1,
            )
        )
    await store.link("alice", "p1", at_ms=1)
    await store.link("alice", "p2", at_ms=1)
    await store.link("bob", "p2", at_ms=1)
    await store.link("bob", "p3", at_ms=1)
    await store.revoke_device("p3", at_ms=2)
    for sid, user, expires in (
        ("sess.a", "alice", 10**13),
        ("sess.b", "bob", 10**13),
        ("sess.old", "carol", 5),
        ("sess.c", "carol", 10**13),
    ):
        await store.add_session(
            Session(
                session_id=sid,
                user_sub=user,
                client_name=None,
                signing_key=b"k" * 32,
                encryption_key=b"x" * 32,
                created_at_ms=1,
                expires_at_ms=expires,
            )
        )
    fleet = BrokerFleet(
        (), store, password_for=lambda sid: f"pw-{sid}", logger=structlog.get_logger(), clock_ms=lambda: 1000
    )
    full = await fleet.desired()
    scopes = [
        scope_for_session("sess.a", "alice", ["p1", "p2"]),
        scope_for_session("sess.old", "carol"),
        scope_for_session("sess.gone", "dave"),
        scope_for_link("alice", "p1"),
        scope_for_link("bob", "p3"),
        scope_for_device("p3", ["bob"]),
        scope_for_device("p2", ["alice", "bob"]),
        Scope(clients=frozenset({"p1", "sess.b", "nobody"})),
    ]
    for scope in scopes:
        assert restrict(await fleet.desired(scope), scope) == restrict(full, scope), scope
