"""The service's source of truth: devices, certificates, user-device links and sessions.

SQLAlchemy 2 (Core, asyncio) over a connection pool, on SQLite (embedded default, through
aiosqlite) or PostgreSQL (psycopg 3), with the schema in `amora_authz._schema` and its
migrations run by Alembic (`Store.migrate`). Every call runs in its own short transaction
on a pooled connection, so requests no longer queue behind one connection; calls made
inside `Store.transaction` by the same task share that transaction. "Insert unless
present" uses ``ON CONFLICT DO NOTHING``, so both databases report a conflict the same way
(by the affected row count). Database errors never leave this module: they become
`StoreError`. How statements run (engine, pool, transactions, advisory locks) is
`amora_authz._statements`; this module holds what they say.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from amora_authz._database import current_revision, upgrade
from amora_authz._errors import ConflictError, NotFoundError, StoreError
from amora_authz._queries import (
    active_devices_count,
    beyond,
    evict_beyond,
    live_count,
    managed_counts_statement,
    open_session_statement,
    session_lists_statement,
)
from amora_authz._records import Certificate, Device, Link, Session, b64_text, device_of_row, session_of_row
from amora_authz._schema import certificates, devices, links, revocations, sessions
from amora_authz._statements import StatementRunner

if TYPE_CHECKING:
    from collections.abc import Collection, Mapping

__all__ = [
    "Certificate",
    "Device",
    "Link",
    "Session",
    "Store",
    "open_store",
]


class Store(StatementRunner):
    """Async access to the service's data on SQLite or PostgreSQL.

    Use as an async context manager (``async with await open_store(url) as store``), then
    call :meth:`migrate` once before anything else. How statements run (pool, transactions,
    locks) is `amora_authz._statements.StatementRunner`'s job.
    """

    # -- schema --------------------------------------------------------------------

    async def migrate(self) -> int:
        """Bring the schema to the newest revision (Alembic), adopting a legacy database.

        A database made by the earlier migration runner (table ``schema_migrations``) is
        stamped at the matching revision first, so nothing is created twice.

        Returns:
            The schema version after migrating.

        Raises:
            StoreError: a migration failed, or the legacy version is unknown.
        """
        try:
            async with self._transactional.connect() as conn, conn.begin():
                await conn.run_sync(upgrade)
        except SQLAlchemyError as exc:
            raise StoreError(f"migration failed: {exc}") from exc
        return await self.schema_version()

    async def schema_version(self) -> int:
        """Return the applied schema revision as a number (0 when none)."""
        async with self._connection() as conn:
            revision = await conn.run_sync(current_revision)
        return int(revision) if revision else 0

    # -- devices -------------------------------------------------------------------

    async def add_device(self, device: Device) -> None:
        """Register a device.

        Raises:
            ConflictError: a device with this id exists (active or revoked).
        """
        statement = (
            self._insert(devices)
            .values(
                device_id=device.device_id,
                signing_key=b64_text(device.signing_key),
                encryption_key=b64_text(device.encryption_key),
                created_at_ms=device.created_at_ms,
                revoked_at_ms=device.revoked_at_ms,
            )
            .on_conflict_do_nothing(index_elements=["device_id"])
            .returning(devices.c.device_id)
        )
        if await self._execute(statement) == 0:
            raise ConflictError(f"device {device.device_id!r} is already registered", code="device_exists")

    async def get_device(self, device_id: str) -> Device | None:
        """Return the device, or ``None`` when it was never registered."""
        rows = await self._rows(sa.select(devices).where(devices.c.device_id == device_id))
        return device_of_row(rows[0]) if rows else None

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
        statement = sa.select(devices).order_by(devices.c.device_id)
        if not include_revoked:
            statement = statement.where(devices.c.revoked_at_ms.is_(None))
        return [device_of_row(r) for r in await self._rows(statement)]

    async def revoke_device(self, device_id: str, *, at_ms: int) -> list[int]:
        """Mark the device and all its certificates revoked; drop its links.

        Returns:
            The serials of the certificates revoked by this call.

        Raises:
            NotFoundError: it was never registered.
            ConflictError: it was already revoked.
        """
        async with self.transaction():
            # FOR UPDATE (PostgreSQL; SQLite's BEGIN IMMEDIATE already excludes other
            # writers): two revocations of one device cannot both pass the check.
            rows = await self._rows(sa.select(devices).where(devices.c.device_id == device_id).with_for_update())
            if not rows:
                raise NotFoundError(f"device {device_id!r} is not registered", kind="device", key=device_id)
            if device_of_row(rows[0]).revoked:
                raise ConflictError(f"device {device_id!r} is already revoked", code="device_revoked")
            live = sa.and_(certificates.c.device_id == device_id, certificates.c.revoked_at_ms.is_(None))
            serials = [int(r.serial) for r in await self._rows(sa.select(certificates.c.serial).where(live))]
            await self._execute(sa.update(certificates).where(live).values(revoked_at_ms=at_ms))
            await self._execute(sa.delete(links).where(links.c.device_id == device_id))
            await self._execute(sa.update(devices).where(devices.c.device_id == device_id).values(revoked_at_ms=at_ms))
        return serials

    # -- certificates --------------------------------------------------------------

    async def add_certificate(self, cert: Certificate) -> None:
        """Record a certificate issued to a device."""
        await self._execute(
            sa.insert(certificates).values(
                serial=str(cert.serial),
                device_id=cert.device_id,
                issued_at_ms=cert.issued_at_ms,
                not_after_ms=cert.not_after_ms,
                revoked_at_ms=None,
            )
        )

    async def revoked_certificates(self) -> list[Certificate]:
        """Return every revoked certificate (what the CRL must list)."""
        rows = await self._rows(
            sa.select(certificates)
            .where(certificates.c.revoked_at_ms.is_not(None))
            .order_by(certificates.c.issued_at_ms)
        )
        return [
            Certificate(
                serial=int(r.serial),
                device_id=r.device_id,
                issued_at_ms=int(r.issued_at_ms),
                not_after_ms=int(r.not_after_ms),
                revoked_at_ms=int(r.revoked_at_ms),
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
        statement = (
            self._insert(links)
            .values(user_sub=user_sub, device_id=device_id, created_at_ms=at_ms)
            .on_conflict_do_nothing(index_elements=["user_sub", "device_id"])
            .returning(links.c.device_id)
        )
        return await self._execute(statement) > 0

    async def unlink(self, user_sub: str, device_id: str) -> bool:
        """Remove a user's right to a device.

        Returns:
            ``True`` when a link was removed, ``False`` when there was none.
        """
        statement = (
            sa.delete(links)
            .where(links.c.user_sub == user_sub, links.c.device_id == device_id)
            .returning(links.c.device_id)
        )
        return await self._execute(statement) > 0

    async def devices_of_user(self, user_sub: str) -> list[str]:
        """Return the ids of the devices a user may use, sorted."""
        statement = sa.select(links.c.device_id).where(links.c.user_sub == user_sub).order_by(links.c.device_id)
        return [r.device_id for r in await self._rows(statement)]

    async def users_of_device(self, device_id: str) -> list[str]:
        """Return the users linked to a device, sorted."""
        statement = sa.select(links.c.user_sub).where(links.c.device_id == device_id).order_by(links.c.user_sub)
        return [r.user_sub for r in await self._rows(statement)]

    async def list_links(self) -> list[Link]:
        """Return every link."""
        rows = await self._rows(sa.select(links).order_by(links.c.user_sub, links.c.device_id))
        return [Link(user_sub=r.user_sub, device_id=r.device_id, created_at_ms=int(r.created_at_ms)) for r in rows]

    # -- sessions ------------------------------------------------------------------

    def _session_insert(self, session: Session) -> Any:  # noqa: ANN401 - a dialect's Insert
        return (
            self._insert(sessions)
            .values(
                session_id=session.session_id,
                user_sub=session.user_sub,
                client_name=session.client_name,
                signing_key=b64_text(session.signing_key),
                encryption_key=b64_text(session.encryption_key),
                created_at_ms=session.created_at_ms,
                expires_at_ms=session.expires_at_ms,
            )
            .on_conflict_do_nothing(index_elements=["session_id"])
            .returning(sessions.c.session_id)
        )

    async def add_session(self, session: Session) -> None:
        """Record a new session.

        Raises:
            ConflictError: the session id is taken (never in practice: ids are random).
        """
        if await self._execute(self._session_insert(session)) == 0:
            raise ConflictError(f"session {session.session_id!r} exists", code="session_exists")

    async def get_session(self, session_id: str) -> Session | None:
        """Return the session, or ``None``."""
        rows = await self._rows(sa.select(sessions).where(sessions.c.session_id == session_id))
        return session_of_row(rows[0]) if rows else None

    async def extend_session(self, session_id: str, *, expires_at_ms: int) -> None:
        """Set a session's expiry.

        Raises:
            NotFoundError: there is no such session.
        """
        statement = (
            sa.update(sessions)
            .where(sessions.c.session_id == session_id)
            .values(expires_at_ms=expires_at_ms)
            .returning(sessions.c.session_id)
        )
        if await self._execute(statement) == 0:
            raise NotFoundError(f"session {session_id!r} does not exist", kind="session", key=session_id)

    async def delete_session(self, session_id: str) -> bool:
        """Delete a session; return whether it existed."""
        statement = sa.delete(sessions).where(sessions.c.session_id == session_id).returning(sessions.c.session_id)
        return await self._execute(statement) > 0

    async def active_sessions(self, *, now_ms: int) -> list[Session]:
        """Return the sessions that have not expired at ``now_ms``."""
        statement = sa.select(sessions).where(sessions.c.expires_at_ms > now_ms).order_by(sessions.c.session_id)
        return [session_of_row(r) for r in await self._rows(statement)]

    async def delete_expired_sessions(self, *, now_ms: int) -> dict[str, str]:
        """Delete the sessions expired at ``now_ms``; return their ids and users (id -> user)."""
        expired = sessions.c.expires_at_ms <= now_ms
        statement = sa.delete(sessions).where(expired).returning(sessions.c.session_id, sessions.c.user_sub)
        return {r.session_id: r.user_sub for r in await self._rows(statement)}

    # -- token mode: ended sessions and their revocations ---------------------------------

    async def end_sessions(
        self,
        *,
        session_ids: Collection[str] = (),
        users: Collection[str] = (),
        expired_at_ms: int | None = None,
        margin_s: int,
        at_ms: int,
    ) -> dict[str, str]:
        """Delete sessions and record each as revoked until its expiry plus ``margin_s``, atomically.

        Token mode: a session's broker token stays valid until it expires, so ending the
        session must leave a revocation the brokers are told about (and told again after a
        miss); both happen in one transaction, so no session ends without one.

        Args:
            session_ids: these sessions.
            users: every session of these users.
            expired_at_ms: every session expired at this time.
            margin_s: added to each expiry (the brokers' clocks may run behind ours).
            at_ms: when they were revoked.

        Returns:
            The ended sessions' ids and users (id -> user).
        """
        conditions: list[sa.ColumnElement[bool]] = []
        if session_ids:
            conditions.append(sessions.c.session_id.in_(sorted(session_ids)))
        if users:
            conditions.append(sessions.c.user_sub.in_(sorted(users)))
        if expired_at_ms is not None:
            conditions.append(sessions.c.expires_at_ms <= expired_at_ms)
        if not conditions:
            return {}
        statement = (
            sa.delete(sessions)
            .where(sa.or_(*conditions))
            .returning(sessions.c.session_id, sessions.c.user_sub, sessions.c.expires_at_ms)
        )
        async with self.transaction():
            rows = await self._rows(statement)
            await self.record_revocations(
                {r.session_id: (r.user_sub, -(-int(r.expires_at_ms) // 1000) + margin_s) for r in rows}, at_ms=at_ms
            )
        return {r.session_id: r.user_sub for r in rows}

    async def sessions_beyond(self, session: Session, *, max_per_user: int) -> list[str]:
        """The ids of the user's live sessions beyond the newest ``max_per_user`` (``session`` counted)."""
        return sorted(r.session_id for r in await self._rows(beyond(session, max_per_user)))

    async def record_revocations(self, revoked: Mapping[str, tuple[str, int]], *, at_ms: int) -> None:
        """Record revocations (username -> (user, until_s)); an existing one keeps the later ``until_s``."""
        if not revoked:
            return
        insert = self._insert(revocations).values(
            [
                {"username": name, "user_sub": user, "until_s": until, "revoked_at_ms": at_ms}
                for name, (user, until) in sorted(revoked.items())
            ]
        )
        # The later of the two: SQLite's two-argument max(), PostgreSQL's greatest().
        later = sa.func.greatest if self._engine.dialect.name == "postgresql" else sa.func.max
        statement = insert.on_conflict_do_update(
            index_elements=["username"],
            set_={"until_s": later(revocations.c.until_s, insert.excluded.until_s)},
        )
        await self._execute(statement)

    async def live_revocations(self, usernames: Collection[str] | None = None, *, now_s: int) -> dict[str, int]:
        """The revocations in force at ``now_s`` (username -> until_s), of ``usernames`` or all."""
        statement = sa.select(revocations.c.username, revocations.c.until_s).where(revocations.c.until_s > now_s)
        if usernames is not None:
            if not usernames:
                return {}
            statement = statement.where(revocations.c.username.in_(sorted(usernames)))
        return {r.username: int(r.until_s) for r in await self._rows(statement)}

    async def revocations_of(self, usernames: Collection[str] | None = None) -> dict[str, int]:
        """Every recorded revocation (username -> until_s), of ``usernames`` or all, past or not.

        A revocation past its ``until_s`` is kept until every broker acknowledged it (see
        `amora_authz._fleet.BrokerFleet.revocations_owed`): the kick must still reach a broker
        that missed it, whose connection with the expired token is still up.
        """
        statement = sa.select(revocations.c.username, revocations.c.until_s)
        if usernames is not None:
            if not usernames:
                return {}
            statement = statement.where(revocations.c.username.in_(sorted(usernames)))
        return {r.username: int(r.until_s) for r in await self._rows(statement)}

    async def purge_revocations(self, *, now_s: int) -> int:
        """Delete the revocations past their ``until_s`` (their tokens expired); return how many."""
        statement = sa.delete(revocations).where(revocations.c.until_s <= now_s).returning(revocations.c.username)
        return await self._execute(statement)

    # -- several rows per statement (the login path and reconciliation) ------------------

    async def open_session(self, session: Session, *, max_per_user: int) -> tuple[list[str], list[Device]]:
        """Record a new session, end the user's oldest beyond ``max_per_user``, read the user's devices.

        What a login needs from the database in as few round trips as it can: on PostgreSQL
        one statement (the insert and the eviction as data-modifying CTEs, atomic on their
        own), on SQLite three single statements (four when the user is over the cap).

        Returns:
            The ids of the sessions ended to make room, and the user's active devices.

        Raises:
            ConflictError: the session id is taken (never in practice: ids are random).
        """
        evict = evict_beyond(session, max_per_user)
        if self._engine.dialect.name == "postgresql" and not self._in_transaction():
            return await self._open_session_in_one_statement(session, evict)
        # SQLite: single statements, each committing on its own (in-process: no round trips
        # to save). A transaction would hold the database's single write lock across them,
        # and concurrent logins would then wait out busy retries (measured: a p99 of 1.5-2 s
        # with 8 clients); so would an eviction statement run on every login, hence the
        # count (a read) first.
        # Nothing needs them atomic: the row goes first, and an eviction that races another
        # login of the same user ends a session either way.
        await self.add_session(session)
        ended: list[str] = []
        if int(await self._scalar(live_count(session)) or 0) > max_per_user:
            ended = sorted(r.session_id for r in await self._rows(evict))
        found = await self.active_devices_of_users([session.user_sub])
        return ended, found.get(session.user_sub, [])

    async def _open_session_in_one_statement(self, session: Session, evict: Any) -> tuple[list[str], list[Device]]:  # noqa: ANN401
        statement = open_session_statement(self._session_insert(session), evict, session.user_sub)
        rows = await self._rows(statement)
        if not any(r.kind == "inserted" for r in rows):
            raise ConflictError(f"session {session.session_id!r} exists", code="session_exists")
        ended_ids = sorted(r.device_id for r in rows if r.kind == "ended")
        found = sorted((device_of_row(r) for r in rows if r.kind == "device"), key=lambda d: d.device_id)
        return ended_ids, found

    async def active_devices_of_users(self, user_subs: Collection[str]) -> dict[str, list[Device]]:
        """The active devices linked to each of ``user_subs`` (one statement; users without any are absent)."""
        if not user_subs:
            return {}
        statement = (
            sa.select(links.c.user_sub, devices)
            .join(devices, devices.c.device_id == links.c.device_id)
            .where(links.c.user_sub.in_(sorted(user_subs)), devices.c.revoked_at_ms.is_(None))
            .order_by(links.c.user_sub, devices.c.device_id)
        )
        found: dict[str, list[Device]] = {}
        for row in await self._rows(statement):
            found.setdefault(row.user_sub, []).append(device_of_row(row))
        return found

    async def active_devices(self, device_ids: Collection[str]) -> dict[str, Device]:
        """The active (registered, not revoked) devices among ``device_ids``, by id."""
        if not device_ids:
            return {}
        statement = sa.select(devices).where(
            devices.c.device_id.in_(sorted(device_ids)), devices.c.revoked_at_ms.is_(None)
        )
        return {d.device_id: d for d in map(device_of_row, await self._rows(statement))}

    async def live_sessions(self, session_ids: Collection[str], *, now_ms: int) -> dict[str, Session]:
        """The sessions among ``session_ids`` that have not expired at ``now_ms``, by id."""
        if not session_ids:
            return {}
        statement = sa.select(sessions).where(
            sessions.c.session_id.in_(sorted(session_ids)), sessions.c.expires_at_ms > now_ms
        )
        return {s.session_id: s for s in map(session_of_row, await self._rows(statement))}

    async def users_with_sessions(self, user_subs: Collection[str], *, now_ms: int) -> set[str]:
        """Which of ``user_subs`` hold at least one session live at ``now_ms``."""
        if not user_subs:
            return set()
        statement = (
            sa.select(sessions.c.user_sub)
            .where(sessions.c.user_sub.in_(sorted(user_subs)), sessions.c.expires_at_ms > now_ms)
            .distinct()
        )
        return {r.user_sub for r in await self._rows(statement)}

    async def managed_counts(self, *, session_clients: bool = True) -> tuple[int, int, int]:
        """How many clients, groups and roles the brokers should hold for this database.

        Sessions are counted whether expired or not (the expiry sweep deletes the row and its
        client together), as are the users who hold them; plus the session-list publisher's
        client and role. One statement: aggregates the database computes, for the periodic
        cheap comparison with a broker's counts (`amora_authz._fleet`).

        Args:
            session_clients: False in token mode: sessions are no dynsec clients, and there
                are no user groups and no ``user-device:`` roles.
        """
        if not session_clients:
            # Token mode: the devices alone, so the periodic check reads no session row at all.
            device_count = int(await self._scalar(active_devices_count()) or 0)
            return device_count + 1, 0, device_count + 1
        statement = managed_counts_statement()
        row: tuple[Any, ...] = tuple((await self._rows(statement))[0])
        device_count, session_count, user_count = (int(value) for value in row)
        return device_count + session_count + 1, user_count, 2 * device_count + 1

    async def sessions_of_devices(
        self, device_ids: Collection[str] | None, *, now_ms: int
    ) -> dict[str, tuple[str, ...]]:
        """The live sessions whose users are linked to each device (its session list), sorted.

        Args:
            device_ids: the devices (None: every active device).
            now_ms: sessions expired at this time are left out.

        Returns:
            One entry per asked device (per active device when None); a revoked or unknown
            device, or one without a live session, maps to ``()``.
        """
        statement = session_lists_statement(now_ms)
        if device_ids is not None:
            statement = statement.where(links.c.device_id.in_(sorted(device_ids)))
            wanted = set(device_ids)
        else:
            wanted = {d.device_id for d in await self.list_devices()}
        found: dict[str, set[str]] = {d: set() for d in wanted}
        for row in await self._rows(statement):
            found.setdefault(row.device_id, set()).add(row.session_id)
        return {d: tuple(sorted(ids)) for d, ids in sorted(found.items())}


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
    return await Store.open(url)
