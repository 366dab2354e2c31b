"""How the store runs statements: the engine and its pool, single statements, transactions, locks.

`amora_authz._store.Store` builds on it with the service's own statements; the other modules
of the package that keep their own tables (backends, enrolment claims, admin listings) run
theirs through the same `StatementRunner._rows` / `_execute`. Every call runs in its own short
transaction on a pooled connection; calls made inside `StatementRunner.transaction` by the same
task share that transaction. Database errors never leave: they become `StoreError`.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
from typing import TYPE_CHECKING, Any, Self

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from amora_authz._database import configure_sqlite, engine_url
from amora_authz._errors import StoreError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
    from types import TracebackType

__all__ = ["StatementRunner"]

# PostgreSQL: connections kept open, and how many more may be opened under load. The HTTP
# server admits more requests than this; the rest wait for a connection (pool_timeout).
_PG_POOL_SIZE = 10
_PG_MAX_OVERFLOW = 10
_POOL_TIMEOUT_S = 10.0


_current: contextvars.ContextVar[AsyncConnection | None] = contextvars.ContextVar("amora_authz_store_tx", default=None)
"""The connection of the transaction the current task is in (contextvars are per task)."""


class StatementRunner:
    """Runs statements on SQLite or PostgreSQL through a connection pool (use a subclass)."""

    def __init__(self, engine: AsyncEngine) -> None:
        """Wrap an engine (use :func:`open_store`)."""
        self._engine = engine
        # Two views of the same pool. Single statements commit on their own, with no
        # BEGIN/COMMIT round trips (PostgreSQL: autocommit mode; SQLite: no BEGIN sent).
        # Transactions: READ COMMITTED on PostgreSQL; on SQLite they take the write lock
        # at once (see `amora_authz._database.configure_sqlite`).
        self._transactional = engine.execution_options(amora_transaction=True)
        if engine.dialect.name != "sqlite":
            self._transactional = self._transactional.execution_options(isolation_level="READ COMMITTED")
        self._single = engine
        self._insert: Callable[[sa.Table], Any] = (
            sqlite.insert if engine.dialect.name == "sqlite" else postgresql.insert
        )

    @classmethod
    async def open(cls, url: str) -> Self:
        """Create the engine for ``url`` and check that the database answers.

        Raises:
            StoreError: the URL is not supported, or the database cannot be reached.
        """
        target = engine_url(url)
        # No rollback when a connection goes back to the pool: every transaction here is
        # ended explicitly (`_connection`), and single statements run outside one, so the
        # reset would only cost a round trip per call.
        options: dict[str, Any] = {"pool_timeout": _POOL_TIMEOUT_S, "pool_reset_on_return": None}
        if target.startswith("postgresql"):
            # A connection the server closed fails the statement under way; SQLAlchemy then
            # discards the pool's connections and the next call connects afresh. (pre_ping
            # would hide that failure at the price of a round trip per call.) Connections
            # are in autocommit mode; transactions switch theirs to READ COMMITTED.
            options |= {
                "pool_size": _PG_POOL_SIZE,
                "max_overflow": _PG_MAX_OVERFLOW,
                "isolation_level": "AUTOCOMMIT",
            }
        elif target == "sqlite+aiosqlite://":
            options = {}  # one shared in-memory database: SQLAlchemy keeps a single connection
        try:
            engine = create_async_engine(target, **options)
        except (SQLAlchemyError, ImportError, ValueError) as exc:
            raise StoreError(f"cannot use database URL: {exc}") from exc
        if engine.dialect.name == "sqlite":
            configure_sqlite(engine)
        store = cls(engine)
        try:
            await store._scalar(sa.select(sa.literal(1)))
        except StoreError:
            await engine.dispose()
            raise
        return store

    async def close(self) -> None:
        """Close every pooled connection."""
        await self._engine.dispose()

    async def __aenter__(self) -> Self:
        """Return the open store."""
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the store."""
        await self.close()

    # -- running statements ----------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _connection(self, *, transaction: bool = False) -> AsyncIterator[AsyncConnection]:
        """The current task's transaction, else a pooled connection (in a new transaction if asked)."""
        current = _current.get()
        if current is not None:
            yield current
            return
        try:
            if transaction:
                async with self._transactional.connect() as conn, conn.begin():
                    yield conn
            else:
                async with self._single.connect() as conn:
                    yield conn
        except SQLAlchemyError as exc:
            raise StoreError(f"database error: {exc}") from exc
        except OSError as exc:
            raise StoreError(f"database unreachable: {exc}") from exc

    async def _execute(self, statement: sa.Executable) -> int:
        """Run a write; return how many rows it returned (give it ``RETURNING`` to count them).

        Counting returned rows rather than ``rowcount`` keeps the answer the same on every
        driver (psycopg's async cursor reports -1 here).
        """
        async with self._connection() as conn:
            try:
                result = await conn.execute(statement)
                return len(result.all()) if result.returns_rows else 0
            except SQLAlchemyError as exc:
                raise StoreError(f"database error: {exc}") from exc

    async def _rows(self, statement: sa.Executable) -> list[sa.Row[Any]]:
        async with self._connection() as conn:
            try:
                return list((await conn.execute(statement)).all())
            except SQLAlchemyError as exc:
                raise StoreError(f"database error: {exc}") from exc

    async def _scalar(self, statement: sa.Executable) -> Any:  # noqa: ANN401 - a column's value
        rows = await self._rows(statement)
        return rows[0][0] if rows else None

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        """Run the block's store calls in one transaction (rolled back if it raises).

        Calls made by other tasks meanwhile run on other connections, outside it.

        Raises:
            StoreError: the database failed.
        """
        if _current.get() is not None:
            yield  # already inside one: join it
            return
        async with self._connection(transaction=True) as conn:
            token = _current.set(conn)
            try:
                yield
            finally:
                _current.reset(token)

    @contextlib.asynccontextmanager
    async def exclusive(self, name: str) -> AsyncIterator[None]:
        """Hold the lock ``name`` against every process on this database for the block.

        PostgreSQL: a session advisory lock on a connection of its own, so replicas of the
        service on one database take turns (a process that dies loses its locks with its
        connection). SQLite: nothing to take; a SQLite database belongs to one process.

        Raises:
            StoreError: the database failed while taking the lock.
        """
        if self._engine.dialect.name == "sqlite":
            yield
            return
        digest = hashlib.sha256(f"amora-authz:{name}".encode()).digest()
        key = int.from_bytes(digest[:8], "big", signed=True)
        # Its own connection, never the task's transaction: the lock outlives statements.
        conn = self._single.connect()
        try:
            await conn.start()
            await conn.execute(sa.select(sa.func.pg_advisory_lock(key)))
        except (SQLAlchemyError, OSError) as exc:
            await conn.close()
            raise StoreError(f"database error while taking lock {name!r}: {exc}") from exc
        try:
            yield
        finally:
            try:
                await conn.execute(sa.select(sa.func.pg_advisory_unlock(key)))
            except (SQLAlchemyError, OSError):
                # Never hand a connection that may still hold the lock back to the pool.
                await conn.invalidate()
            finally:
                await conn.close()

    def _in_transaction(self) -> bool:
        """Whether the current task runs inside `transaction`."""
        return _current.get() is not None
