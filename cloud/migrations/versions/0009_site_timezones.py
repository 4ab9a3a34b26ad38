"""sites.timezone: the IANA time zone an estate's site config names, reported by its gateways

Night rules, planned maintenance and the console's times follow the estate's clock; until now the cloud
knew it only if the rules file listed the site (``site_timezones``), else it took the default.

Revision ID: 0009
Revises: 0001
Create Date: 2026-11-24 07:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = ("site_timezones",)
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("sites", sa.Column("timezone", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sites") as batch:
        batch.drop_column("timezone")
