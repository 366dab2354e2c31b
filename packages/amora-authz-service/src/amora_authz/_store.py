"""The service's source of truth: devices, certificates, user-device links and sessions.

One interface (:class:`Store`) with two back ends that run the *same* SQL and the same
migrations: SQLite (embedded default, via aiosqlite) and PostgreSQL (psycopg 3).
Statements are written with ``?`` placeholders; the PostgreSQL back end rewrites them
to ``%s``. Every write is a single statement in autocommit mode, and "insert unless
present" uses ``ON CONFLICT DO NOTHING`` so both back ends report conflicts the same way
(by the affected row count) without dialect-specific exception types.
"""

from __future__ import annotations

import abc
import asyncio
import base64
import contextlib
import sqlite3
from importlib import resources
from typing import TYPE_CHECKING, Any, Self

import aiosqlite
import msgspec
import psycopg

from amora_authz._errors import ConflictError, NotFoundError, StoreError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence
    from types import TracebackType

__all__ = [
    "Certificate",
    "Device",
    "Link",
    "PostgresStore",
    "Session",
    "SqliteStore",
    "Store",
    "open_store",
]

Row = tuple[Any, ...]


class Device(msgspec.Struct, frozen=True, kw_only=True):
    """A registered player.

    Attributes:
        device_id: the device id (also its certificate CN and broker client id).
        signing_key: raw Ed25519 public key (32 bytes).
        encryption_key: raw X25519 public key (32 bytes).
        created_at_ms: registration time.
        revoked_at_ms: revocation time, ``None`` while active.
    """

    device_id: str
    signing_key: bytes
    encryption_key: bytes
    created_at_ms: int
    revoked_at_ms: int | None = None

    @property
    def revoked(self) -> bool:
        """Whether the device has been revoked."""
        return self.revoked_at_ms is not None


class Certificate(msgspec.Struct, frozen=True, kw_only=True):
    """A client certificate issued to a device (serial as decimal text)."""

    serial: int
    device_id: str
    issued_at_ms: int
    not_after_ms: int
    revoked_at_ms: int | None = None


class Link(msgspec.Struct, frozen=True, kw_only=True):
    """A user's right to use a device."""

    user_sub: str
    device_id: str
    created_at_ms: int


class Session(msgspec.Struct, frozen=True, kw_only=True):
    """An app session: one broker client (username = client id = session id)."""

    session_id: str
    user_sub: str
    client_name: str | None
    signing_key: bytes
    encryption_key: bytes
    created_at_ms: int
    expires_at_ms: int


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text)


def _device(row: Row) -> Device:
    return Device(
        device_id=row[0],
        signing_key=_unb64(row[1]),
        encryption_key=_unb64(row[2]),
        created_at_ms=int(row[3]),
        revoked_at_ms=None if row[4] is None else int(row[4]),
    )


def _session(row: Row) -> Session:
    return Session(
        session_id=row[0],
        user_sub=row[1],
        client_name=row[2],
        signing_key=_unb64(row[3]),
        encryption_key=_unb64(row[4]),
        created_at_ms=int(row[5]),
        expires_at_ms=int(row[6]),
    )


_DEVICE_COLS = "device_id, signing_key, encryption_key, created_at_ms, revoked_at_ms"
_SESSION_COLS = "session_id, user_sub, client_name, signing_key, encryption_key, created_at_ms, expires_at_ms"


def _migrations() -> list[tuple[int, list[str]]]:
    """Return (version, statements) for every bundled migration, in order."""
    found: list[tuple[int, list[str]]] = []
    folder = resources.files("amora_authz") / "migrations"
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".sql"):
            continue
        version = int(entry.name.split("_", 1)[0])
        text = "\n".join(line for line in entry.read_text("utf-8").splitlines() if not line.startswith("--"))
        statements = [s.strip() for s in text.split(";") if s.strip()]
        found.append((version, statements))
    return found


class Store(abc.ABC):
    """Async access to the service's data; one implementation per database.

    Use as an async context manager (``async with open_store(url) as store``), then
    call :meth:`migrate` once before anything else.
    """

    def __init__(self) -> None:
        """Set up the connection guard (subclasses open the connection)."""
        # One connection serves one statement at a time: callers queue on the lock
        # (bounded by the requests the HTTP server admits at once). The task inside a
        # transaction owns the connection until it ends.
        self._lock = asyncio.Lock()
        self._owner: asyncio.Task[Any] | None = None

    # -- back-end primitives -------------------------------------------------------

    @abc.abstractmethod
    async def _raw_execute(self, sql: str, params: Sequence[Any]) -> int:
        """Run one statement on the connection; return the number of affected rows."""

    @abc.abstractmethod
    async def _raw_fetch(self, sql: str, params: Sequence[Any]) -> list[Row]:
        """Run one query on the connection; return every row."""

    async def _prepare(self) -> None:
        """Hook run before each use of the connection (reconnect when lost)."""
        return

    @contextlib.asynccontextmanager
    async def _serial(self) -> AsyncIterator[None]:
        if self._owner is not None and self._owner is asyncio.current_task():
            yield
            return
        async with self._lock:
            await self._prepare()
            yield

    async def _execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        async with self._serial():
            return await self._raw_execute(sql, params)

    async def _fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        async with self._serial():
            return await self._raw_fetch(sql, params)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        """Run the block's statements in one transaction (rolled back if it raises).

        Raises:
            StoreError: the database failed.
        """
        async with self._lock:
            await self._prepare()
            self._owner = asyncio.current_task()
            try:
                await self._raw_execute("BEGIN", ())
                try:
                    yield
                except BaseException:
                    await self._raw_execute("ROLLBACK", ())
                    raise
                await self._raw_execute("COMMIT", ())
            finally:
                self._owner = None

    @abc.abstractmethod
    async def close(self) -> None:
        """Close the connection."""

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

    # -- schema --------------------------------------------------------------------

    async def migrate(self) -> int:
        """Apply every migration not applied yet.

        Returns:
            The schema version after migrating.
        """
        await self._execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at TEXT NOT NULL)"
        )
        done = {int(r[0]) for r in await self._fetch("SELECT version FROM schema_migrations")}
        current = max(done, default=0)
        for version, statements in _migrations():
            if version not in done:
                try:
                    async with self.transaction():
                        for statement in statements:
                            await self._execute(statement)
                        await self._execute(
                            "INSERT INTO schema_migrations (version, applied_at) VALUES (?, CURRENT_TIMESTAMP)",
                            (version,),
                        )
                except StoreError as exc:
                    raise StoreError(f"migration {version} failed: {exc.message}") from exc
                current = max(current, version)
        return current

    async def schema_version(self) -> int:
        """Return the highest applied migration (0 when none)."""
        rows = await self._fetch("SELECT MAX(version) FROM schema_migrations")
        return int(rows[0][0] or 0) if rows else 0

    # -- devices -------------------------------------------------------------------

    async def add_device(self, device: Device) -> None:
        """Register a device.

        Raises:
            ConflictError: a device with this id exists (active or revoked).
        """
        count = await self._execute(
            f"INSERT INTO devices ({_DEVICE_COLS}) VALUES (?, ?, ?, ?, ?) "  # noqa: S608 - fixed columns
            "ON CONFLICT (device_id) DO NOTHING",
            (
                device.device_id,
                _b64(device.signing_key),
                _b64(device.encryption_key),
                device.created_at_ms,
                device.revoked_at_ms,
            ),
        )
        if count == 0:
            raise ConflictError(f"device {device.device_id!r} is already registered", code="device_exists")

    async def get_device(self, device_id: str) -> Device | None:
        """Return the device, or ``None`` when it was never registered."""
        rows = await self._fetch(
            f"SELECT {_DEVICE_COLS} FROM devices WHERE device_id = ?",  # noqa: S608 - fixed columns
            (device_id,),
        )
        return _device(rows[0]) if rows else None

    async def require_device(self, device_id: str) -> Device:
        """Return the device.

        Raises:
            NotFoundError: it was never registered.
        """
        device = await self.get_device(device_id)
        if device is None:
            raise NotFoundError(f"device {device_id!r} is not registered", kind="device", key=device_id)
        return device

    async def list_devices(self, *, include_revoked: bool = False) -> list[Device]:
        """Return every device (active ones only unless ``include_revoked``)."""
        where = "" if include_revoked else " WHERE revoked_at_ms IS NULL"
        rows = await self._fetch(
            f"SELECT {_DEVICE_COLS} FROM devices{where} ORDER BY device_id"  # noqa: S608 - fixed
        )
        return [_device(r) for r in rows]

    async def revoke_device(self, device_id: str, *, at_ms: int) -> list[int]:
        """Mark the device and all its certificates revoked; drop its links.

        Returns:
            The serials of the certificates revoked by this call.

        Raises:
            NotFoundError: it was never registered.
            ConflictError: it was already revoked.
        """
        async with self.transaction():
            return await self._revoke_device(device_id, at_ms=at_ms)

    async def _revoke_device(self, device_id: str, *, at_ms: int) -> list[int]:
        device = await self.require_device(device_id)
        if device.revoked:
            raise ConflictError(f"device {device_id!r} is already revoked", code="device_revoked")
        rows = await self._fetch(
            "SELECT serial FROM certificates WHERE device_id = ? AND revoked_at_ms IS NULL",
            (device_id,),
        )
        await self._execute(
            "UPDATE certificates SET revoked_at_ms = ? WHERE device_id = ? AND revoked_at_ms IS NULL",
            (at_ms, device_id),
        )
        await self._execute("DELETE FROM links WHERE device_id = ?", (device_id,))
        await self._execute("UPDATE devices SET revoked_at_ms = ? WHERE device_id = ?", (at_ms, device_id))
        return [int(r[0]) for r in rows]

    # -- certificates --------------------------------------------------------------

    async def add_certificate(self, cert: Certificate) -> None:
        """Record a certificate issued to a device."""
        await self._execute(
            "INSERT INTO certificates (serial, device_id, issued_at_ms, not_after_ms, "
            "revoked_at_ms) VALUES (?, ?, ?, ?, ?)",
            (str(cert.serial), cert.device_id, cert.issued_at_ms, cert.not_after_ms, None),
        )

    async def revoked_certificates(self) -> list[Certificate]:
        """Return every revoked certificate (what the CRL must list)."""
        rows = await self._fetch(
            "SELECT serial, device_id, issued_at_ms, not_after_ms, revoked_at_ms "
            "FROM certificates WHERE revoked_at_ms IS NOT NULL ORDER BY issued_at_ms"
        )
        return [
            Certificate(
                serial=int(r[0]),
                device_id=r[1],
                issued_at_ms=int(r[2]),
                not_after_ms=int(r[3]),
                revoked_at_ms=int(r[4]),
            )
            for r in rows
        ]

    # -- links ---------------------------------------------------------------------

    async def link(self, user_sub: str, device_id: str, *, at_ms: int) -> bool:
        """Let a user use a device.

        Returns:
            ``True`` when the link is new, ``False`` when it already existed.

        Raises:
            NotFoundError: the device is not registered.
            ConflictError: the device is revoked.
        """
        device = await self.require_device(device_id)
        if device.revoked:
            raise ConflictError(f"device {device_id!r} is revoked", code="device_revoked")
        count = await self._execute(
            "INSERT INTO links (user_sub, device_id, created_at_ms) VALUES (?, ?, ?) "
            "ON CONFLICT (user_sub, device_id) DO NOTHING",
            (user_sub, device_id, at_ms),
        )
        return count > 0

    async def unlink(self, user_sub: str, device_id: str) -> bool:
        """Remove a user's right to a device.

        Returns:
            ``True`` when a link was removed, ``False`` when there was none.
        """
        count = await self._execute("DELETE FROM links WHERE user_sub = ? AND device_id = ?", (user_sub, device_id))
        return count > 0

    async def devices_of_user(self, user_sub: str) -> list[str]:
        """Return the ids of the devices a user may use, sorted."""
        rows = await self._fetch("SELECT device_id FROM links WHERE user_sub = ? ORDER BY device_id", (user_sub,))
        return [r[0] for r in rows]

    async def users_of_device(self, device_id: str) -> list[str]:
        """Return the users linked to a device, sorted."""
        rows = await self._fetch("SELECT user_sub FROM links WHERE device_id = ? ORDER BY user_sub", (device_id,))
        return [r[0] for r in rows]

    async def list_links(self) -> list[Link]:
        """Return every link."""
        rows = await self._fetch("SELECT user_sub, device_id, created_at_ms FROM links ORDER BY user_sub, device_id")
        return [Link(user_sub=r[0], device_id=r[1], created_at_ms=int(r[2])) for r in rows]

    # -- sessions ------------------------------------------------------------------

    async def add_session(self, session: Session) -> None:
        """Record a new session.

        Raises:
            ConflictError: the session id is taken (never in practice: ids are random).
        """
        count = await self._execute(
            f"INSERT INTO sessions ({_SESSION_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?) "  # noqa: S608
            "ON CONFLICT (session_id) DO NOTHING",
            (
                session.session_id,
                session.user_sub,
                session.client_name,
                _b64(session.signing_key),
                _b64(session.encryption_key),
                session.created_at_ms,
                session.expires_at_ms,
            ),
        )
        if count == 0:
            raise ConflictError(f"session {session.session_id!r} exists", code="session_exists")

    async def get_session(self, session_id: str) -> Session | None:
        """Return the session, or ``None``."""
        rows = await self._fetch(
            f"SELECT {_SESSION_COLS} FROM sessions WHERE session_id = ?",  # noqa: S608
            (session_id,),
        )
        return _session(rows[0]) if rows else None

    async def extend_session(self, session_id: str, *, expires_at_ms: int) -> None:
        """Set a session's expiry.

        Raises:
            NotFoundError: there is no such session.
        """
        count = await self._execute(
            "UPDATE sessions SET expires_at_ms = ? WHERE session_id = ?",
            (expires_at_ms, session_id),
        )
        if count == 0:
            raise NotFoundError(f"session {session_id!r} does not exist", kind="session", key=session_id)

    async def delete_session(self, session_id: str) -> bool:
        """Delete a session; return whether it existed."""
        count = await self._execute("DELETE FROM sessions WHERE session_id = ?", (session_id,))
        return count > 0

    async def active_sessions(self, *, now_ms: int) -> list[Session]:
        """Return the sessions that have not expired at ``now_ms``."""
        rows = await self._fetch(
            f"SELECT {_SESSION_COLS} FROM sessions WHERE expires_at_ms > ? "  # noqa: S608
            "ORDER BY session_id",
            (now_ms,),
        )
        return [_session(r) for r in rows]

    async def active_sessions_of_user(self, user_sub: str, *, now_ms: int) -> list[Session]:
        """Return a user's sessions that have not expired at ``now_ms``."""
        rows = await self._fetch(
            f"SELECT {_SESSION_COLS} FROM sessions WHERE user_sub = ? AND expires_at_ms > ? "  # noqa: S608
            "ORDER BY session_id",
            (user_sub, now_ms),
        )
        return [_session(r) for r in rows]

    async def count_active_sessions_of_user(self, user_sub: str, *, now_ms: int) -> int:
        """Return how many of a user's sessions have not expired at ``now_ms``."""
        rows = await self._fetch(
            "SELECT COUNT(*) FROM sessions WHERE user_sub = ? AND expires_at_ms > ?", (user_sub, now_ms)
        )
        return int(rows[0][0]) if rows else 0

    async def delete_expired_sessions(self, *, now_ms: int) -> list[str]:
        """Delete the sessions expired at ``now_ms``; return their ids."""
        async with self.transaction():
            rows = await self._fetch("SELECT session_id FROM sessions WHERE expires_at_ms <= ?", (now_ms,))
            await self._execute("DELETE FROM sessions WHERE expires_at_ms <= ?", (now_ms,))
        return [r[0] for r in rows]


class SqliteStore(Store):
    """SQLite back end (aiosqlite: one connection on its own thread)."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        """Wrap an open connection (use :meth:`open`)."""
        super().__init__()
        self._conn = conn

    @classmethod
    async def open(cls, path: str) -> SqliteStore:
        """Open (creating if needed) the database at ``path`` (``:memory:`` allowed).

        Raises:
            StoreError: the file cannot be opened.
        """
        try:
            conn = await aiosqlite.connect(path, isolation_level=None)
            await conn.execute("PRAGMA foreign_keys = ON")
            await conn.execute("PRAGMA journal_mode = WAL")
            await conn.execute("PRAGMA busy_timeout = 5000")
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open SQLite database {path!r}: {exc}") from exc
        return cls(conn)

    async def _raw_execute(self, sql: str, params: Sequence[Any]) -> int:
        try:
            async with self._conn.execute(sql, tuple(params)) as cur:
                return cur.rowcount
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite error: {exc}") from exc

    async def _raw_fetch(self, sql: str, params: Sequence[Any]) -> list[Row]:
        try:
            async with self._conn.execute(sql, tuple(params)) as cur:
                return [tuple(r) for r in await cur.fetchall()]
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite error: {exc}") from exc

    async def close(self) -> None:
        """Close the connection."""
        await self._conn.close()


class PostgresStore(Store):
    """PostgreSQL back end (psycopg 3, one autocommit connection, calls serialised).

    A lost connection fails the statement under way (``StoreError``); the next call
    connects again.
    """

    def __init__(self, conn: psycopg.AsyncConnection[Any], dsn: str) -> None:
        """Wrap an open connection (use :meth:`open`)."""
        super().__init__()
        self._conn = conn
        self._dsn = dsn

    @staticmethod
    async def _connect(dsn: str) -> psycopg.AsyncConnection[Any]:
        try:
            return await psycopg.AsyncConnection.connect(dsn, autocommit=True)
        except psycopg.Error as exc:
            raise StoreError(f"cannot connect to PostgreSQL: {exc}") from exc

    @classmethod
    async def open(cls, dsn: str) -> PostgresStore:
        """Connect to ``dsn``.

        Raises:
            StoreError: the server cannot be reached or refuses the login.
        """
        return cls(await cls._connect(dsn), dsn)

    async def _prepare(self) -> None:
        if self._conn.closed:
            self._conn = await self._connect(self._dsn)

    @staticmethod
    def _sql(sql: str) -> str:
        return sql.replace("?", "%s")

    async def _raw_execute(self, sql: str, params: Sequence[Any]) -> int:
        try:
            cur = await self._conn.execute(self._sql(sql), tuple(params))
        except psycopg.Error as exc:
            raise StoreError(f"PostgreSQL error: {exc}") from exc
        return cur.rowcount

    async def _raw_fetch(self, sql: str, params: Sequence[Any]) -> list[Row]:
        try:
            cur = await self._conn.execute(self._sql(sql), tuple(params))
            return [tuple(r) for r in await cur.fetchall()]
        except psycopg.Error as exc:
            raise StoreError(f"PostgreSQL error: {exc}") from exc

    async def close(self) -> None:
        """Close the connection."""
        await self._conn.close()


async def open_store(url: str) -> Store:
    """Open the store named by ``url``.

    Args:
        url: ``sqlite://`` followed by a path (``sqlite:///var/lib/amora/authz.db``,
            ``sqlite://authz.db`` relative, ``sqlite://:memory:`` for tests) or a
            ``postgresql://`` / ``postgres://`` DSN.

    Returns:
        The open store (an async context manager that closes it).

    Raises:
        StoreError: the URL names no supported database, or it cannot be opened.
    """
    if url.startswith("sqlite://"):
        return await SqliteStore.open(url.removeprefix("sqlite://"))
    if url.startswith(("postgresql://", "postgres://")):
        return await PostgresStore.open(url)
    raise StoreError(f"unsupported database URL {url.split(':', 1)[0]!r}")
