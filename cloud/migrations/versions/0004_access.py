"""access: credentials, their change log, per-site versions and per-gateway sync state

Revision ID: 0004
Revises: 0001
Create Date: 2026-11-24 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import cloud.tables

revision: str = "0004"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = ("access",)
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "access_sites",
        sa.Column("site_id", sa.String(length=64), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("log_floor", sa.BigInteger(), nullable=False),
        sa.Column("pin_salt", sa.String(length=128), nullable=True),
        sa.Column("updated_at", cloud.tables.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("site_id"),
    )
    op.create_table(
        "access_credentials",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("site_id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("value", sa.String(length=128), nullable=False),
        sa.Column("holder", sa.String(length=128), nullable=False),
        sa.Column("doors", sa.JSON(), nullable=False),
        sa.Column("valid_from", cloud.tables.UTCDateTime(timezone=True), nullable=True),
        sa.Column("valid_until", cloud.tables.UTCDateTime(timezone=True), nullable=True),
        sa.Column("max_uses", sa.Integer(), nullable=True),
        sa.Column("revoked", sa.Boolean(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.Column("created_at", cloud.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", cloud.tables.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("access_credentials", schema=None) as batch_op:
        batch_op.create_index("ix_access_credentials_site_id", ["site_id", "id"], unique=False)
        batch_op.create_index("ix_access_credentials_site_value", ["site_id", "kind", "value"], unique=False)

    op.create_table(
        "access_changes",
        sa.Column("site_id", sa.String(length=64), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("credential_id", sa.String(length=64), nullable=False),
        sa.Column("op", sa.String(length=8), nullable=False),
        sa.Column("by", sa.String(length=128), nullable=False),
        sa.Column("at", cloud.tables.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("site_id", "version", "credential_id"),
    )
    op.create_table(
        "access_gateway_sync",
        sa.Column("gateway_id", sa.String(length=64), nullable=False),
        sa.Column("site_id", sa.String(length=64), nullable=False),
        sa.Column("reported_version", sa.BigInteger(), nullable=True),
        sa.Column("reported_count", sa.Integer(), nullable=True),
        sa.Column("reported_at", cloud.tables.UTCDateTime(timezone=True), nullable=True),
        sa.Column("rejected", sa.Text(), nullable=True),
        sa.Column("sent_version", sa.BigInteger(), nullable=True),
        sa.Column("sent_full", sa.Boolean(), nullable=False),
        sa.Column("sent_at", cloud.tables.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("gateway_id"),
    )
    with op.batch_alter_table("access_gateway_sync", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_access_gateway_sync_site_id"), ["site_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("access_gateway_sync", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_access_gateway_sync_site_id"))
    op.drop_table("access_gateway_sync")
    op.drop_table("access_changes")
    with op.batch_alter_table("access_credentials", schema=None) as batch_op:
        batch_op.drop_index("ix_access_credentials_site_value")
        batch_op.drop_index("ix_access_credentials_site_id")
    op.drop_table("access_credentials")
    op.drop_table("access_sites")
