"""commissioning: uploaded commissioning reports, per gateway

Revision ID: 0005
Revises: 0001
Create Date: 2026-11-23 12:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import cloud.tables

revision: str = "0005"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = ("commissioning",)
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "commissioning_reports",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("gateway_id", sa.String(length=64), nullable=False),
        sa.Column("site_id", sa.String(length=64), nullable=False),
        sa.Column("uploaded_by", sa.String(length=64), nullable=False),
        sa.Column("uploaded_at", cloud.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("installer", sa.String(length=200), nullable=False),
        sa.Column("generated_at", cloud.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("complete", sa.Boolean(), nullable=False),
        sa.Column("devices", sa.Integer(), nullable=False),
        sa.Column("devices_complete", sa.Integer(), nullable=False),
        sa.Column("report", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("commissioning_reports", schema=None) as batch_op:
        batch_op.create_index("ix_commissioning_reports_gateway", ["gateway_id", "id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("commissioning_reports", schema=None) as batch_op:
        batch_op.drop_index("ix_commissioning_reports_gateway")
    op.drop_table("commissioning_reports")
