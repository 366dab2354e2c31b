"""Enrolment claims: one-time, short-lived, stored as their SHA-256 (issue #17).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create ``enrolment_claims``."""
    op.create_table(
        "enrolment_claims",
        sa.Column("claim_sha256", sa.Text(), primary_key=True),
        sa.Column("device_id", sa.Text()),
        sa.Column("uses_left", sa.Integer(), nullable=False),
        sa.Column("expires_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("created_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("created_by", sa.Text(), nullable=False),
    )


def downgrade() -> None:
    """Drop ``enrolment_claims``."""
    op.drop_table("enrolment_claims")
