"""auth: accounts, tokens, auth audit

Revision ID: 0003
Revises: 0001
Create Date: 2026-11-30 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import cloud.tables

revision: str = "0003"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = ("auth",)
depends_on: str | Sequence[str] | None = None

_BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "auth_users",
        sa.Column("id", sa.String(length=26), nullable=False),
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("password_hash", sa.String(length=255), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("sites", sa.JSON(), nullable=False),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        sa.Column("created_at", cloud.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", cloud.tables.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("username"),
    )
    op.create_table(
        "auth_tokens",
        sa.Column("id", sa.String(length=26), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.String(length=26), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=True),
        sa.Column("created_at", cloud.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", cloud.tables.UTCDateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", cloud.tables.UTCDateTime(timezone=True), nullable=True),
        sa.Column("last_used_at", cloud.tables.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("token_hash"),
    )
    with op.batch_alter_table("auth_tokens", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_auth_tokens_user_id"), ["user_id"], unique=False)
    op.create_table(
        "auth_audit",
        sa.Column("id", _BigId, autoincrement=True, nullable=False),
        sa.Column("at", cloud.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("username", sa.String(length=64), nullable=True),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("site_id", sa.String(length=64), nullable=True),
        sa.Column("permission", sa.String(length=32), nullable=True),
        sa.Column("client_ip", sa.String(length=64), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("auth_audit", schema=None) as batch_op:
        batch_op.create_index("ix_auth_audit_at", ["at"], unique=False)
        batch_op.create_index("ix_auth_audit_username_at", ["username", "at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("auth_audit", schema=None) as batch_op:
        batch_op.drop_index("ix_auth_audit_username_at")
        batch_op.drop_index("ix_auth_audit_at")
    op.drop_table("auth_audit")
    with op.batch_alter_table("auth_tokens", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_auth_tokens_user_id"))
    op.drop_table("auth_tokens")
    op.drop_table("auth_users")
