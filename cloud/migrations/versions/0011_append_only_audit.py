"""The audit trails refuse UPDATE and DELETE in the database itself

``command_audit`` (who sent which command and what became of it), ``auth_audit`` (logins, refusals,
token and account changes) and ``work_order_history`` (every change of a work order's status) were
append-only by convention: nothing in the cloud changes them, but nothing stopped a later bug, a
maintenance script or someone with the application's database login from rewriting who opened a door.
Now a trigger refuses it (and TRUNCATE on PostgreSQL), so the record an estate manager shows an
investigator is the one that was written. Inserts are untouched.

A database owner can still drop the triggers; where that matters, run the cloud as a role that neither
owns the tables nor holds UPDATE and DELETE on them (docs/security.md). A later migration that rebuilds
one of these tables on SQLite (``batch_alter_table``'s copy-and-move) must create its triggers again.

Revision ID: 0011
Revises: 0003 (auth), after 0002 (work orders)
Create Date: 2026-11-24 13:50:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0011"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = ("append_only_audit",)
# auth_audit is the auth branch's (0003), work_order_history the work orders' (0002).
depends_on: str | Sequence[str] | None = ("0002",)

TABLES = ("command_audit", "auth_audit", "work_order_history")
_FUNCTION = "steward_refuse_audit_change"


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        # Created in the first schema of the search path, beside the tables (one per deployment).
        op.execute(
            f"CREATE OR REPLACE FUNCTION {_FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
            " RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP"
            " USING ERRCODE = 'insufficient_privilege'; END $$"
        )
        for table in TABLES:
            op.execute(
                f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table}"
                f" FOR EACH ROW EXECUTE FUNCTION {_FUNCTION}()"
            )
            op.execute(
                f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table}"
                f" FOR EACH STATEMENT EXECUTE FUNCTION {_FUNCTION}()"
            )
        return
    for table in TABLES:
        for verb in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER {table}_no_{verb.lower()} BEFORE {verb} ON {table}"
                f" BEGIN SELECT RAISE(ABORT, '{table} is append-only: {verb} refused'); END"
            )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table in TABLES:
            op.execute(f"DROP TRIGGER IF EXISTS {table}_append_only ON {table}")
            op.execute(f"DROP TRIGGER IF EXISTS {table}_no_truncate ON {table}")
        op.execute(f"DROP FUNCTION IF EXISTS {_FUNCTION}()")
        return
    for table in TABLES:
        for verb in ("update", "delete"):
            op.execute(f"DROP TRIGGER IF EXISTS {table}_no_{verb}")
