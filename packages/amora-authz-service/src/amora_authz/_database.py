"""The database underneath the store: engine URLs, SQLite's set-up, and migrations.

`Store` (``_store``) says *what* is read and written; this module says *how* the engine
talks to each database and how its schema is brought up to date (Alembic, run on the
store's own connection, with the earlier hand-written runner's databases adopted).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import event

from amora_authz._errors import StoreError

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["configure_sqlite", "current_revision", "engine_url", "upgrade"]

_MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# The first Alembic revision is the schema the earlier hand-written runner created as its
# version 1 (table ``schema_migrations``); such databases are stamped there, then upgraded.
_LEGACY_VERSIONS = {1: "0001"}
_SQLITE_BUSY_TIMEOUT_MS = 5000


def engine_url(url: str) -> str:
    """Map the service's database URL to SQLAlchemy's (driver named explicitly).

    Raises:
        StoreError: the URL names no supported database.
    """
    if url.startswith("sqlite://"):
        path = url.removeprefix("sqlite://")
        return "sqlite+aiosqlite://" if path == ":memory:" else f"sqlite+aiosqlite:///{path}"
    for scheme in ("postgresql://", "postgres://"):
        if url.startswith(scheme):
            return "postgresql+psycopg://" + url.removeprefix(scheme)
    msg = f"unsupported database URL {url.split(':', 1)[0]!r}: use sqlite://PATH or postgresql://..."
    raise StoreError(msg)


def configure_sqlite(engine: AsyncEngine) -> None:
    """SQLite: foreign keys, WAL, a busy timeout, and transactions that begin when we say.

    The sqlite3 module would otherwise open a transaction only before the first write and
    never for reads, so a read-then-write block would not be atomic. SQLAlchemy's documented
    recipe (its aiosqlite notes): turn the module's handling off and emit BEGIN ourselves.
    Transactions (`Store.transaction`, migrations) take the write lock at once (BEGIN
    IMMEDIATE) instead of failing to upgrade a read lock later; single statements run
    without BEGIN (SQLite then commits each on its own), saving two round trips to
    aiosqlite's thread.
    """

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: object) -> None:  # noqa: ANN401 - DBAPI connection
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute(f"PRAGMA busy_timeout = {_SQLITE_BUSY_TIMEOUT_MS}")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        if conn.get_execution_options().get("amora_transaction", False):
            conn.exec_driver_sql("BEGIN IMMEDIATE")


def _alembic_config(connection: sa.Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def current_revision(connection: sa.Connection) -> str | None:
    """The Alembic revision the database is at (``None``: not under Alembic)."""
    return MigrationContext.configure(connection).get_current_revision()


def upgrade(connection: sa.Connection) -> None:
    """Adopt a legacy database if needed, then upgrade to head (runs inside ``run_sync``)."""
    config = _alembic_config(connection)
    tables = set(sa.inspect(connection).get_table_names())
    if "schema_migrations" in tables and current_revision(connection) is None:
        legacy = connection.execute(sa.text("SELECT MAX(version) FROM schema_migrations")).scalar()
        revision = _LEGACY_VERSIONS.get(int(legacy or 0))
        if revision is None:
            msg = f"the database has schema version {legacy} of an unknown migration runner; migrate it by hand"
            raise StoreError(msg)
        command.stamp(config, revision)
    command.upgrade(config, "head")
