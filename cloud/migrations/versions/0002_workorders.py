"""work orders: rules, deadlines, escalations, timers, webhook outbox, planned runs

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import cloud.tables

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = ("workorders",)
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "work_order_runs",
        sa.Column("schedule_id", sa.String(length=80), nullable=False),
        sa.Column("site_id", sa.String(length=64), nullable=False),
        sa.Column("period", sa.String(length=32), nullable=False),
        sa.Column("work_order_id", sa.BigInteger(), nullable=True),
        sa.Column("instance", sa.String(length=64), nullable=False),
        sa.Column("at", cloud.tables.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("schedule_id", "site_id", "period"),
    )
    op.create_table(
        "work_order_timers",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("work_order_id", sa.BigInteger(), nullable=True),
        sa.Column("deadline", sa.String(length=16), nullable=True),
        sa.Column("level", sa.Integer(), nullable=True),
        sa.Column("rule_id", sa.String(length=64), nullable=True),
        sa.Column("device_id", sa.String(length=64), nullable=True),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("due_at", cloud.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("claimed_by", sa.String(length=64), nullable=True),
        sa.Column("done_at", cloud.tables.UTCDateTime(timezone=True), nullable=True),
        sa.Column("outcome", sa.String(length=16), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("work_order_timers", schema=None) as batch_op:
        batch_op.create_index("ix_work_order_timers_due", ["done_at", "due_at"], unique=False)

    op.create_table(
        "work_order_webhooks",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("work_order_id", sa.BigInteger(), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", cloud.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("lease_until", cloud.tables.UTCDateTime(timezone=True), nullable=True),
        sa.Column("leased_by", sa.String(length=64), nullable=True),
        sa.Column("delivered_at", cloud.tables.UTCDateTime(timezone=True), nullable=True),
        sa.Column("gave_up_at", cloud.tables.UTCDateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", cloud.tables.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("work_order_webhooks", schema=None) as batch_op:
        batch_op.create_index("ix_work_order_webhooks_due", ["delivered_at", "next_attempt_at"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_work_order_webhooks_work_order_id"), ["work_order_id"], unique=False
        )

    op.create_table(
        "work_orders",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("rule_id", sa.String(length=64), nullable=True),
        sa.Column("open_key", sa.String(length=400), nullable=True),
        sa.Column("condition_key", sa.String(length=400), nullable=False),
        sa.Column("site_id", sa.String(length=64), nullable=True),
        sa.Column("gateway_id", sa.String(length=64), nullable=True),
        sa.Column("device_id", sa.String(length=64), nullable=True),
        sa.Column("apartment", sa.String(length=64), nullable=True),
        sa.Column("location", sa.JSON(), nullable=True),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("category", sa.String(length=64), nullable=False),
        sa.Column("priority", sa.String(length=16), nullable=False),
        sa.Column("teams", sa.JSON(), nullable=False),
        sa.Column("title", sa.String(length=200), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("assignee", sa.String(length=128), nullable=True),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.Column("occurrences", sa.Integer(), nullable=False),
        sa.Column("first_seen", cloud.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("last_seen", cloud.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("cleared_at", cloud.tables.UTCDateTime(timezone=True), nullable=True),
        sa.Column("cleared_by", sa.String(length=64), nullable=True),
        sa.Column("response_due", cloud.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("resolution_due", cloud.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("escalation_level", sa.Integer(), nullable=False),
        sa.Column("created_at", cloud.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", cloud.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("acknowledged_at", cloud.tables.UTCDateTime(timezone=True), nullable=True),
        sa.Column("resolved_at", cloud.tables.UTCDateTime(timezone=True), nullable=True),
        sa.Column("closed_at", cloud.tables.UTCDateTime(timezone=True), nullable=True),
        sa.Column("follow_up_reached", sa.Boolean(), nullable=True),
        sa.Column("follow_up_satisfaction", sa.Integer(), nullable=True),
        sa.Column("follow_up_comment", sa.Text(), nullable=True),
        sa.Column("follow_up_at", cloud.tables.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("open_key"),
    )
    with op.batch_alter_table("work_orders", schema=None) as batch_op:
        batch_op.create_index("ix_work_orders_rule_device", ["rule_id", "device_id"], unique=False)
        batch_op.create_index("ix_work_orders_site_created", ["site_id", "created_at"], unique=False)
        batch_op.create_index("ix_work_orders_status", ["status", "id"], unique=False)

    op.create_table(
        "work_order_escalations",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("work_order_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("deadline", sa.String(length=16), nullable=False),
        sa.Column("level", sa.Integer(), nullable=False),
        sa.Column("notify", sa.String(length=64), nullable=False),
        sa.Column("due_at", cloud.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("at", cloud.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("instance", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(["work_order_id"], ["work_orders.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("work_order_escalations", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_work_order_escalations_work_order_id"), ["work_order_id"], unique=False
        )

    op.create_table(
        "work_order_history",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("work_order_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("from_status", sa.String(length=16), nullable=True),
        sa.Column("to_status", sa.String(length=16), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("at", cloud.tables.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["work_order_id"], ["work_orders.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("work_order_history", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_work_order_history_work_order_id"), ["work_order_id"], unique=False
        )

    op.create_table(
        "work_order_occurrences",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("work_order_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("event_id", sa.String(length=26), nullable=True),
        sa.Column("event_type", sa.String(length=64), nullable=True),
        sa.Column("at", cloud.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["work_order_id"], ["work_orders.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("work_order_occurrences", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_work_order_occurrences_work_order_id"), ["work_order_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("work_order_occurrences", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_work_order_occurrences_work_order_id"))

    op.drop_table("work_order_occurrences")
    with op.batch_alter_table("work_order_history", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_work_order_history_work_order_id"))

    op.drop_table("work_order_history")
    with op.batch_alter_table("work_order_escalations", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_work_order_escalations_work_order_id"))

    op.drop_table("work_order_escalations")
    with op.batch_alter_table("work_orders", schema=None) as batch_op:
        batch_op.drop_index("ix_work_orders_status")
        batch_op.drop_index("ix_work_orders_site_created")
        batch_op.drop_index("ix_work_orders_rule_device")

    op.drop_table("work_orders")
    with op.batch_alter_table("work_order_webhooks", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_work_order_webhooks_work_order_id"))
        batch_op.drop_index("ix_work_order_webhooks_due")

    op.drop_table("work_order_webhooks")
    with op.batch_alter_table("work_order_timers", schema=None) as batch_op:
        batch_op.drop_index("ix_work_order_timers_due")

    op.drop_table("work_order_timers")
    op.drop_table("work_order_runs")
