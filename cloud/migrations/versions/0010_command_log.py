"""The command log: indexes for listing commands newest first by site, device, operator or all

``GET /api/v1/commands`` pages by (issued_at, id) and filters by site, device or issuer; the device index
replaces ``ix_commands_device_id`` (its first column is the same, so lookups by device keep an index).

Revision ID: 0010
Revises: 0001
Create Date: 2026-11-24 09:20:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0010"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = ("command_log",)
depends_on: str | Sequence[str] | None = None

_INDEXES = {
    "ix_commands_site_issued": ["site_id", "issued_at", "id"],
    "ix_commands_device_issued": ["device_id", "issued_at", "id"],
    "ix_commands_issued_by": ["issued_by", "issued_at", "id"],
    "ix_commands_issued": ["issued_at", "id"],
}


def upgrade() -> None:
    for name, columns in _INDEXES.items():
        op.create_index(name, "commands", columns)
    op.drop_index("ix_commands_device_id", table_name="commands")


def downgrade() -> None:
    op.create_index("ix_commands_device_id", "commands", ["device_id"])
    for name in _INDEXES:
        op.drop_index(name, table_name="commands")
