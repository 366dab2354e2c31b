"""Statements of the login path and of reconciliation, built with SQLAlchemy Core (no I/O).

Each reads or writes several rows in one statement, so that a login or a periodic check costs
one round trip where it used to cost one per row (`amora_authz._store` runs them;
``docs/decisions/0013-logins-resume-and-reconcile-cost.md``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from amora_authz._schema import devices, links, sessions

if TYPE_CHECKING:
    from amora_authz._records import Session

__all__ = [
    "active_devices_count",
    "beyond",
    "evict_beyond",
    "live_count",
    "managed_counts_statement",
    "open_session_statement",
    "session_lists_statement",
]


def beyond(session: Session, max_per_user: int) -> sa.Select[Any]:
    """The ids of the user's live sessions beyond the newest ``max_per_user - 1`` others."""
    return (
        sa.select(sessions.c.session_id)
        .where(
            sessions.c.user_sub == session.user_sub,
            sessions.c.expires_at_ms > session.created_at_ms,
            sessions.c.session_id != session.session_id,
        )
        .order_by(sessions.c.created_at_ms.desc(), sessions.c.session_id.desc())
        .offset(max(0, max_per_user - 1))  # the newest others stay, besides the new one
    )


def evict_beyond(session: Session, max_per_user: int) -> Any:  # noqa: ANN401 - a ReturningDelete
    """Delete the user's live sessions beyond the newest ``max_per_user - 1`` others; return their ids."""
    others = beyond(session, max_per_user)
    return sa.delete(sessions).where(sessions.c.session_id.in_(others)).returning(sessions.c.session_id)


def live_count(session: Session) -> sa.Select[Any]:
    """How many live sessions the session's user holds (the new one included once inserted)."""
    return (
        sa.select(sa.func.count())
        .select_from(sessions)
        .where(sessions.c.user_sub == session.user_sub, sessions.c.expires_at_ms > session.created_at_ms)
    )


def open_session_statement(insert: Any, evict: Any, user_sub: str) -> sa.Executable:  # noqa: ANN401 - dialect DML
    """PostgreSQL: insert, evict and read the user's devices in one statement (data-modifying CTEs).

    Rows are tagged by ``kind``: ``inserted`` (absent when the id clashed), ``ended`` (an
    evicted session id in ``device_id``), ``device`` (a device row).
    """
    inserted = insert.cte("inserted")
    # Only when the insert happened: a clash must not end anyone's session.
    ended = evict.where(sa.exists(sa.select(inserted.c.session_id))).cte("ended")
    text, number = sa.Text(), sa.BigInteger()
    return sa.union_all(
        sa.select(
            sa.literal("inserted").label("kind"),
            inserted.c.session_id.label("device_id"),
            sa.null().cast(text).label("signing_key"),
            sa.null().cast(text).label("encryption_key"),
            sa.null().cast(number).label("created_at_ms"),
            sa.null().cast(number).label("revoked_at_ms"),
        ),
        sa.select(
            sa.literal("ended"),
            ended.c.session_id,
            sa.null().cast(text),
            sa.null().cast(text),
            sa.null().cast(number),
            sa.null().cast(number),
        ),
        sa.select(
            sa.literal("device"),
            devices.c.device_id,
            devices.c.signing_key,
            devices.c.encryption_key,
            devices.c.created_at_ms,
            devices.c.revoked_at_ms,
        )
        .join(links, links.c.device_id == devices.c.device_id)
        .where(links.c.user_sub == user_sub, devices.c.revoked_at_ms.is_(None)),
    )


def active_devices_count() -> sa.Select[Any]:
    """How many devices are active (registered, not revoked)."""
    return sa.select(sa.func.count()).select_from(devices).where(devices.c.revoked_at_ms.is_(None))


def managed_counts_statement() -> sa.Select[Any]:
    """Active devices, session rows (expired or not) and users (linked to an active device or holding a session)."""
    active = devices.c.revoked_at_ms.is_(None)
    users = sa.union(
        sa.select(links.c.user_sub).join(devices, devices.c.device_id == links.c.device_id).where(active),
        sa.select(sessions.c.user_sub),
    ).subquery()
    return sa.select(
        sa.select(sa.func.count()).select_from(devices).where(active).scalar_subquery(),
        sa.select(sa.func.count()).select_from(sessions).scalar_subquery(),
        sa.select(sa.func.count()).select_from(users).scalar_subquery(),
    )


def session_lists_statement(now_ms: int) -> sa.Select[Any]:
    """(device, session) pairs: live sessions of users linked to active devices (narrow with ``where``)."""
    return (
        sa.select(links.c.device_id, sessions.c.session_id)
        .join(devices, devices.c.device_id == links.c.device_id)
        .join(sessions, sessions.c.user_sub == links.c.user_sub)
        .where(devices.c.revoked_at_ms.is_(None), sessions.c.expires_at_ms > now_ms)
    )
