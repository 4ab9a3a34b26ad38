"""rejected_events: the events of an acknowledged batch that the cloud could not accept, as received

Revision ID: 0007
Revises: 0001
Create Date: 2026-11-24 03:05:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import cloud.tables

revision: str = "0007"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = ("rejected_events",)
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "rejected_events",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("site_id", sa.String(length=64), nullable=False),
        sa.Column("gateway_id", sa.String(length=64), nullable=False),
        sa.Column("batch_id", sa.String(length=64), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("received_at", cloud.tables.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    op.create_index("ix_rejected_events_gateway_id", "rejected_events", ["gateway_id"])


def downgrade() -> None:
    op.drop_index("ix_rejected_events_gateway_id", table_name="rejected_events")
    op.drop_table("rejected_events")
