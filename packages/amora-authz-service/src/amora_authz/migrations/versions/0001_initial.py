"""The initial schema: devices, certificates, user-device links, sessions.

Identical to the schema the service's earlier migration runner created as its version 1
(``schema_migrations``), so such a database is stamped at this revision, not re-created.

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create the four tables and their indexes."""
    op.create_table(
        "devices",
        sa.Column("device_id", sa.Text(), primary_key=True),
        sa.Column("signing_key", sa.Text(), nullable=False),
        sa.Column("encryption_key", sa.Text(), nullable=False),
        sa.Column("created_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("revoked_at_ms", sa.BigInteger()),
    )
    op.create_table(
        "certificates",
        sa.Column("serial", sa.Text(), primary_key=True),
        sa.Column("device_id", sa.Text(), sa.ForeignKey("devices.device_id"), nullable=False),
        sa.Column("issued_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("not_after_ms", sa.BigInteger(), nullable=False),
        sa.Column("revoked_at_ms", sa.BigInteger()),
    )
    op.create_table(
        "links",
        sa.Column("user_sub", sa.Text(), primary_key=True),
        sa.Column("device_id", sa.Text(), sa.ForeignKey("devices.device_id"), primary_key=True),
        sa.Column("created_at_ms", sa.BigInteger(), nullable=False),
    )
    op.create_index("links_by_device", "links", ["device_id"])
    op.create_table(
        "sessions",
        sa.Column("session_id", sa.Text(), primary_key=True),
        sa.Column("user_sub", sa.Text(), nullable=False),
        sa.Column("client_name", sa.Text()),
        sa.Column("signing_key", sa.Text(), nullable=False),
        sa.Column("encryption_key", sa.Text(), nullable=False),
        sa.Column("created_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("expires_at_ms", sa.BigInteger(), nullable=False),
    )
    op.create_index("sessions_by_user", "sessions", ["user_sub"])


def downgrade() -> None:
    """Drop everything (a fresh database)."""
    op.drop_index("sessions_by_user", "sessions")
    op.drop_table("sessions")
    op.drop_index("links_by_device", "links")
    op.drop_table("links")
    op.drop_table("certificates")
    op.drop_table("devices")
