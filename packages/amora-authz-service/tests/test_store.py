"""The same store tests on SQLite (in-process) and on a real PostgreSQL (harness)."""

from __future__ import annotations

import asyncio
import sqlite3

import msgspec
import psycopg
import pytest

from amora_authz import ConflictError, NotFoundError, StoreError
from amora_authz._store import Certificate, Device, Session, Store
from amora_authz._store import open_store as open_any_store


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
    assert await store.schema_version() == 4
    assert await store.migrate() == 4
    assert await store.schema_version() == 4


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
    assert set(await store.live_sessions(["sess.a", "sess.b", "sess.zzz"], now_ms=6_000)) == {"sess.b"}
    assert await store.users_with_sessions(["alice", "bob", "dave"], now_ms=6_000) == {"alice", "bob"}
    assert await store.users_with_sessions(["alice"], now_ms=10_000) == set()
    await store.extend_session("sess.b", expires_at_ms=30_000)
    with pytest.raises(NotFoundError):
        await store.extend_session("sess.zzz", expires_at_ms=1)
    assert await store.delete_expired_sessions(now_ms=25_000) == {"sess.a": "alice", "sess.c": "bob"}
    assert [s.session_id for s in await store.active_sessions(now_ms=0)] == ["sess.b"]
    assert await store.delete_session("sess.b") is True
    assert await store.delete_session("sess.b") is False
    assert await store.get_session("sess.b") is None


async def test_opening_a_session_ends_the_oldest_beyond_the_cap_in_one_go(store: Store) -> None:
    await store.add_device(device("p1"))
    await store.add_device(device("p2"))
    await store.link("alice", "p1", at_ms=1)
    await store.link("alice", "p2", at_ms=1)
    await store.revoke_device("p2", at_ms=2)
    for i, created in enumerate((100, 300, 200)):
        older = msgspec.structs.replace(session(f"sess.{i}", "alice", expires=9_000), created_at_ms=created)
        await store.add_session(older)
    await store.add_session(session("sess.bob", "bob", expires=9_000))
    new = msgspec.structs.replace(session("sess.new", "alice", expires=9_000), created_at_ms=400)
    ended, found = await store.open_session(new, max_per_user=2)
    # The new one and the newest other stay; the two oldest of alice's end, bob's is untouched.
    assert ended == ["sess.0", "sess.2"]
    assert [d.device_id for d in found] == ["p1"]  # the revoked device is left out
    assert set(await store.live_sessions(["sess.0", "sess.1", "sess.2", "sess.new", "sess.bob"], now_ms=0)) == {
        "sess.1",
        "sess.new",
        "sess.bob",
    }
    assert await store.sessions_of_devices(["p1", "p2", "p9"], now_ms=0) == {
        "p1": ("sess.1", "sess.new"),
        "p2": (),
        "p9": (),
    }
    assert await store.sessions_of_devices(None, now_ms=0) == {"p1": ("sess.1", "sess.new")}
    with pytest.raises(ConflictError):
        await store.open_session(new, max_per_user=2)
    assert set(await store.live_sessions(["sess.1", "sess.new"], now_ms=0)) == {"sess.1", "sess.new"}


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


async def test_postgres_recovers_from_connections_the_server_closed(postgres_dsn: str) -> None:
    async with await open_any_store(postgres_dsn) as store:
        await store.migrate()
        await store.add_device(device("p0"))  # the pool now holds a connection
        # The server ends every other backend on this database (a restart, an idle timeout).
        async with await psycopg.AsyncConnection.connect(postgres_dsn, autocommit=True) as admin:
            cur = await admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            row = await cur.fetchone()
            assert row is not None
            assert row[0] >= 1
        # The call that meets the dead connection fails, and says so; the pool is then
        # discarded, so the next call works on a fresh connection.
        with pytest.raises(StoreError):
            await store.add_device(device("p1"))
        await store.add_device(device("p1"))
        assert [d.device_id for d in await store.list_devices()] == ["p0", "p1"]


async def test_calls_run_in_parallel_on_the_pool(store: Store) -> None:
    # While one task holds a transaction open, another task's reads are answered (they
    # used to queue behind the single connection).
    await store.add_device(device("p1"))
    entered = asyncio.Event()
    release = asyncio.Event()

    async def long_transaction() -> None:
        async with store.transaction():
            await store.link("alice", "p1", at_ms=1)
            entered.set()
            await release.wait()

    task = asyncio.create_task(long_transaction())
    await entered.wait()
    try:
        assert (await asyncio.wait_for(store.get_device("p1"), timeout=10)) == device("p1")
        assert await asyncio.wait_for(store.devices_of_user("alice"), timeout=10) == []  # not committed yet
    finally:
        release.set()
        await task
    assert await store.devices_of_user("alice") == ["p1"]


LEGACY_SQL = """
CREATE TABLE schema_migrations (version BIGINT PRIMARY KEY, applied_at TEXT NOT NULL);
CREATE TABLE devices (device_id TEXT PRIMARY KEY, signing_key TEXT NOT NULL, encryption_key TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL, revoked_at_ms BIGINT);
CREATE TABLE certificates (serial TEXT PRIMARY KEY, device_id TEXT NOT NULL REFERENCES devices (device_id),
    issued_at_ms BIGINT NOT NULL, not_after_ms BIGINT NOT NULL, revoked_at_ms BIGINT);
CREATE TABLE links (user_sub TEXT NOT NULL, device_id TEXT NOT NULL REFERENCES devices (device_id),
    created_at_ms BIGINT NOT NULL, PRIMARY KEY (user_sub, device_id));
CREATE INDEX links_by_device ON links (device_id);
CREATE TABLE sessions (session_id TEXT PRIMARY KEY, user_sub TEXT NOT NULL, client_name TEXT,
    signing_key TEXT NOT NULL, encryption_key TEXT NOT NULL, created_at_ms BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL);
CREATE INDEX sessions_by_user ON sessions (user_sub);
INSERT INTO schema_migrations (version, applied_at) VALUES (1, CURRENT_TIMESTAMP);
INSERT INTO devices VALUES ('p1', 'AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=',
    'AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=', 1000, NULL);
INSERT INTO links VALUES ('alice', 'p1', 5)
"""
LEGACY_SCHEMA = [statement.strip() for statement in LEGACY_SQL.split(";")]
"""What the earlier hand-written migration runner left behind (its version 1), with data."""


async def _make_legacy_database(store_url: str) -> None:
    if store_url.startswith("sqlite://"):
        with sqlite3.connect(store_url.removeprefix("sqlite://")) as conn:
            for statement in LEGACY_SCHEMA:
                conn.execute(statement)
        return
    async with await psycopg.AsyncConnection.connect(store_url, autocommit=True) as conn:
        for statement in LEGACY_SCHEMA:
            await conn.execute(statement)


async def test_a_database_of_the_earlier_runner_migrates_forward_with_its_data(store_url: str) -> None:
    await _make_legacy_database(store_url)
    async with await open_any_store(store_url) as store:
        assert await store.schema_version() == 0  # not under Alembic yet
        assert await store.migrate() == 4
        assert await store.get_device("p1") == device("p1")
        assert await store.devices_of_user("alice") == ["p1"]
        await store.add_session(session("sess.new", "alice", expires=10_000))  # the schema works
        assert await store.migrate() == 4  # and migrating again changes nothing


async def test_an_unknown_legacy_version_is_refused_with_the_cause(store_url: str) -> None:
    await _make_legacy_database(store_url)
    statement = "INSERT INTO schema_migrations (version, applied_at) VALUES (7, CURRENT_TIMESTAMP)"
    if store_url.startswith("sqlite://"):
        with sqlite3.connect(store_url.removeprefix("sqlite://")) as conn:
            conn.execute(statement)
    else:
        async with await psycopg.AsyncConnection.connect(store_url, autocommit=True) as conn:
            await conn.execute(statement)
    async with await open_any_store(store_url) as store:
        with pytest.raises(StoreError, match="schema version 7"):
            await store.migrate()
