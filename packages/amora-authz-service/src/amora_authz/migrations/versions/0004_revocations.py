"""Broker token revocations: ended sessions every broker must refuse until their tokens expire (issue #15).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create ``revocations`` and its index on ``until_s`` (the sweep drops past entries)."""
    op.create_table(
        "revocations",
        sa.Column("username", sa.Text(), primary_key=True),
        sa.Column("user_sub", sa.Text(), nullable=False),
        sa.Column("until_s", sa.BigInteger(), nullable=False),
        sa.Column("revoked_at_ms", sa.BigInteger(), nullable=False),
    )
    op.create_index("revocations_by_until", "revocations", ["until_s"])


def downgrade() -> None:
    """Drop ``revocations``."""
    op.drop_index("revocations_by_until", "revocations")
    op.drop_table("revocations")
