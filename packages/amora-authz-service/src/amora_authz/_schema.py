"""The service's tables (SQLAlchemy Core), shared by the store and the Alembic migrations.

Portable types only, so SQLite and PostgreSQL hold the same schema: text, big integers;
keys stored as base64 text, times as milliseconds since the epoch, certificate serials as
decimal text (they exceed 64 bits).
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, ForeignKey, Index, MetaData, Table, Text

__all__ = ["certificates", "devices", "links", "metadata", "revocations", "sessions"]

metadata = MetaData()

devices = Table(
    "devices",
    metadata,
    Column("device_id", Text, primary_key=True),
    Column("signing_key", Text, nullable=False),
    Column("encryption_key", Text, nullable=False),
    Column("created_at_ms", BigInteger, nullable=False),
    Column("revoked_at_ms", BigInteger),
)

certificates = Table(
    "certificates",
    metadata,
    Column("serial", Text, primary_key=True),
    Column("device_id", Text, ForeignKey("devices.device_id"), nullable=False),
    Column("issued_at_ms", BigInteger, nullable=False),
    Column("not_after_ms", BigInteger, nullable=False),
    Column("revoked_at_ms", BigInteger),
)

links = Table(
    "links",
    metadata,
    Column("user_sub", Text, primary_key=True),
    Column("device_id", Text, ForeignKey("devices.device_id"), primary_key=True),
    Column("created_at_ms", BigInteger, nullable=False),
    Index("links_by_device", "device_id"),
)

sessions = Table(
    "sessions",
    metadata,
    Column("session_id", Text, primary_key=True),
    Column("user_sub", Text, nullable=False),
    Column("client_name", Text),
    Column("signing_key", Text, nullable=False),
    Column("encryption_key", Text, nullable=False),
    Column("created_at_ms", BigInteger, nullable=False),
    Column("expires_at_ms", BigInteger, nullable=False),
    Index("sessions_by_user", "user_sub"),
)

# Token mode: ended sessions whose broker tokens every broker must refuse until ``until_s``
# (unix seconds: the session's last token expiry plus a margin for clock skew). Kept so that a
# broker that missed a revocation, or restarted from an older file, gets it again.
revocations = Table(
    "revocations",
    metadata,
    Column("username", Text, primary_key=True),
    Column("user_sub", Text, nullable=False),
    Column("until_s", BigInteger, nullable=False),
    Column("revoked_at_ms", BigInteger, nullable=False),
    Index("revocations_by_until", "until_s"),
)
