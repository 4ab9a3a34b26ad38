"""devices.name: what people call a device (the site config's ``name``), for consoles

Gateways report it in their status (``DeviceInfo.name``); a console showed only ids ("gate-in") where
an operator confirming an open wants "East entrance, inbound".

Revision ID: 0008
Revises: 0001
Create Date: 2026-11-24 07:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = ("device_names",)
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("devices", sa.Column("name", sa.String(length=200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("devices") as batch:
        batch.drop_column("name")
