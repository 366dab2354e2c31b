"""Two service replicas on one PostgreSQL database and one broker (real mosquitto).

Each replica reconciles the brokers from the database: a full pass reads every row, then
the broker's state, then sends the difference. Another replica's change landing between
that read and the commands would be undone (a session created meanwhile deleted, a logout
undone). Passes on one broker therefore take turns across replicas (a lock in the database).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import pytest
import sqlalchemy as sa
import structlog

from amora_authz._desired import scope_for_session
from amora_authz._fleet import BrokerFleet
from amora_authz._store import Session, Store
from amora_authz.testing import broker_endpoint

if TYPE_CHECKING:
    from amora_devtools import BrokerProcess

pytestmark = pytest.mark.services

WAIT = 10.0  # bound for every wait


class _PausedAfterRead(Store):
    """A store whose full read of the sessions stops, after reading, until released."""

    read = asyncio.Event()
    release = asyncio.Event()

    async def active_sessions(self, *, now_ms: int) -> list[Session]:
        rows = await super().active_sessions(now_ms=now_ms)
        type(self).read.set()
        await type(self).release.wait()
        return rows


async def _lock_waiters(store: Store) -> int:
    async with store._single.connect() as conn:  # a look at PostgreSQL's lock table
        query = sa.text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
        return int((await conn.execute(query)).scalar_one())


async def _until_a_lock_is_awaited(store: Store) -> None:
    # PostgreSQL signals nothing when a session starts waiting: look, a bounded number of times.
    for _ in range(int(WAIT / 0.01)):
        if await _lock_waiters(store):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("no replica ever waited for a lock")


async def test_a_full_pass_on_one_replica_never_undoes_a_session_created_on_another(
    broker: BrokerProcess, postgres_dsn: str
) -> None:
    _PausedAfterRead.read, _PausedAfterRead.release = asyncio.Event(), asyncio.Event()
    endpoint = broker_endpoint(broker)
    logger = structlog.get_logger()
    async with await Store.open(postgres_dsn) as store_b, await _PausedAfterRead.open(postgres_dsn) as store_a:
        await store_b.migrate()
        replica_a = BrokerFleet([endpoint], store_a, password_for=lambda s: f"pw-{s}", logger=logger)
        replica_b = BrokerFleet([endpoint], store_b, password_for=lambda s: f"pw-{s}", logger=logger)
        try:
            # Replica A's periodic full pass has read the database (no session yet)...
            full_pass = asyncio.create_task(replica_a.reconcile_all())
            async with asyncio.timeout(WAIT):
                await _PausedAfterRead.read.wait()
            # ...when replica B creates a session: the row first, then its broker client.
            now = time.time_ns() // 1_000_000
            session = Session(
                session_id="sess." + "b" * 32,
                user_sub="alice",
                client_name=None,
                signing_key=b"k" * 32,
                encryption_key=b"x" * 32,
                created_at_ms=now,
                expires_at_ms=now + 3_600_000,
            )
            await store_b.add_session(session)
            created = asyncio.create_task(replica_b.apply(scope_for_session(session.session_id, "alice")))
            # B either finishes (nothing stops it) or waits for A's pass to end.
            waiting = asyncio.create_task(_until_a_lock_is_awaited(store_b))
            await asyncio.wait({created, waiting}, return_when=asyncio.FIRST_COMPLETED)
            waiting.cancel()
            _PausedAfterRead.release.set()
            async with asyncio.timeout(WAIT):
                assert (await full_pass)[broker.name] >= 0
                assert (await created).complete

            on_broker = await replica_b.clients[0].fetch_state()
            assert session.session_id in on_broker.clients, "a stale full pass deleted a live session's credential"
        finally:
            _PausedAfterRead.release.set()
            await replica_a.close()
            await replica_b.close()
