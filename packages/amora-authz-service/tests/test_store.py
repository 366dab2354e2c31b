"""The same store tests on SQLite (in-process) and on a real PostgreSQL (harness)."""

from __future__ import annotations

import asyncio

import pytest

from amora_authz import Certificate, ConflictError, Device, NotFoundError, Session, Store, StoreError
from amora_authz import open_store as open_any_store


def device(device_id: str, *, at: int = 1_000) -> Device:
    return Device(
        device_id=device_id,
        signing_key=bytes([1]) * 32,
        encryption_key=bytes([2]) * 32,
        created_at_ms=at,
    )


def session(session_id: str, user: str, *, expires: int) -> Session:
    return Session(
        session_id=session_id,
        user_sub=user,
        client_name="test app",
        signing_key=bytes(range(32)),
        encryption_key=bytes(range(32, 64)),
        created_at_ms=1_000,
        expires_at_ms=expires,
    )


async def test_migrate_is_idempotent(store: Store) -> None:
    assert await store.schema_version() == 1
    assert await store.migrate() == 1
    assert await store.schema_version() == 1


async def test_device_round_trip_and_conflict(store: Store) -> None:
    await store.add_device(device("player-1"))
    got = await store.get_device("player-1")
    assert got == device("player-1")
    assert await store.get_device("player-2") is None
    with pytest.raises(ConflictError) as info:
        await store.add_device(device("player-1", at=2_000))
    assert info.value.code == "device_exists"
    with pytest.raises(NotFoundError) as missing:
        await store.require_device("nope")
    assert (missing.value.kind, missing.value.key) == ("device", "nope")


async def test_links_both_directions(store: Store) -> None:
    for d in ("p1", "p2", "p3"):
        await store.add_device(device(d))
    assert await store.link("alice", "p2", at_ms=1) is True
    assert await store.link("alice", "p1", at_ms=1) is True
    assert await store.link("alice", "p1", at_ms=2) is False
    assert await store.link("bob", "p1", at_ms=1) is True
    assert await store.devices_of_user("alice") == ["p1", "p2"]
    assert await store.users_of_device("p1") == ["alice", "bob"]
    assert await store.devices_of_user("carol") == []
    assert await store.unlink("alice", "p1") is True
    assert await store.unlink("alice", "p1") is False
    assert await store.devices_of_user("alice") == ["p2"]
    assert [(x.user_sub, x.device_id) for x in await store.list_links()] == [
        ("alice", "p2"),
        ("bob", "p1"),
    ]
    with pytest.raises(NotFoundError):
        await store.link("alice", "unknown", at_ms=1)


async def test_revoke_drops_links_and_revokes_certificates(store: Store) -> None:
    await store.add_device(device("p1"))
    await store.add_device(device("p2"))
    big_serial = 2**126 + 12345  # 127-bit serials do not fit BIGINT: stored as text
    await store.add_certificate(Certificate(serial=big_serial, device_id="p1", issued_at_ms=5, not_after_ms=10**13))
    await store.add_certificate(Certificate(serial=7, device_id="p2", issued_at_ms=5, not_after_ms=10**13))
    await store.link("alice", "p1", at_ms=1)
    assert await store.revoke_device("p1", at_ms=99) == [big_serial]
    revoked = await store.revoked_certificates()
    assert [(c.serial, c.device_id, c.revoked_at_ms) for c in revoked] == [(big_serial, "p1", 99)]
    assert await store.users_of_device("p1") == []
    got = await store.get_device("p1")
    assert got is not None
    assert got.revoked
    assert [d.device_id for d in await store.list_devices()] == ["p2"]
    assert [d.device_id for d in await store.list_devices(include_revoked=True)] == ["p1", "p2"]
    with pytest.raises(ConflictError):
        await store.revoke_device("p1", at_ms=100)
    with pytest.raises(ConflictError):
        await store.link("bob", "p1", at_ms=1)
    # A revoked id stays taken: re-registering it must be an explicit decision.
    with pytest.raises(ConflictError):
        await store.add_device(device("p1"))


async def test_sessions_expire(store: Store) -> None:
    await store.add_session(session("sess.a", "alice", expires=5_000))
    await store.add_session(session("sess.b", "alice", expires=9_000))
    await store.add_session(session("sess.c", "bob", expires=20_000))
    with pytest.raises(ConflictError):
        await store.add_session(session("sess.a", "bob", expires=1))
    got = await store.get_session("sess.a")
    assert got == session("sess.a", "alice", expires=5_000)
    assert [s.session_id for s in await store.active_sessions(now_ms=6_000)] == ["sess.b", "sess.c"]
    assert [s.session_id for s in await store.active_sessions_of_user("alice", now_ms=6_000)] == ["sess.b"]
    assert await store.active_sessions_of_user("dave", now_ms=0) == []
    assert await store.count_active_sessions_of_user("alice", now_ms=6_000) == 1
    assert await store.count_active_sessions_of_user("alice", now_ms=0) == 2
    assert await store.count_active_sessions_of_user("dave", now_ms=0) == 0
    await store.extend_session("sess.b", expires_at_ms=30_000)
    with pytest.raises(NotFoundError):
        await store.extend_session("sess.zzz", expires_at_ms=1)
    assert await store.delete_expired_sessions(now_ms=25_000) == ["sess.a", "sess.c"]
    assert [s.session_id for s in await store.active_sessions(now_ms=0)] == ["sess.b"]
    assert await store.delete_session("sess.b") is True
    assert await store.delete_session("sess.b") is False
    assert await store.get_session("sess.b") is None


async def test_unknown_url_is_a_store_error() -> None:
    with pytest.raises(StoreError):
        await open_any_store("mysql://nope")


async def test_a_failed_transaction_leaves_nothing_behind(store: Store) -> None:
    await store.add_device(device("p1"))
    await store.link("alice", "p1", at_ms=1)

    async def unlink_then_conflict() -> None:
        async with store.transaction():
            await store.unlink("alice", "p1")
            await store.add_device(device("p1"))  # conflicts: the unlink is rolled back

    with pytest.raises(ConflictError):
        await unlink_then_conflict()
    assert await store.devices_of_user("alice") == ["p1"]


async def test_concurrent_calls_do_not_join_another_task_s_transaction(store: Store) -> None:
    await store.add_device(device("p1"))
    entered = asyncio.Event()
    release = asyncio.Event()

    async def failing_transaction() -> None:
        async with store.transaction():
            await store.link("alice", "p1", at_ms=1)
            entered.set()
            await release.wait()
            raise RuntimeError("abort")

    task = asyncio.create_task(failing_transaction())
    await entered.wait()
    # Issued while the other transaction is open: it waits, and is not rolled back with it.
    linking = asyncio.create_task(store.link("bob", "p1", at_ms=1))
    release.set()
    with pytest.raises(RuntimeError):
        await task
    assert await linking is True
    assert await store.users_of_device("p1") == ["bob"]


async def test_postgres_reconnects_after_losing_its_connection(postgres_dsn: str) -> None:
    async with await open_any_store(postgres_dsn) as store:
        await store.migrate()
        with pytest.raises(StoreError):
            await store._fetch("SELECT pg_terminate_backend(pg_backend_pid())")
        await store.add_device(device("p1"))  # a new connection
        assert [d.device_id for d in await store.list_devices()] == ["p1"]
