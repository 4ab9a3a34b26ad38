"""Migrations that do more than create: readings clustered on their key (0006), rejected events (0007)."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, Engine, create_engine, inspect

from cloud.db import alembic_config
from cloud.tables import Base

ROWS = [("meter-1", "kwh", 1_790_000_000_000, 1.5), ("meter-1", "v", 1_790_000_000_000, 229.8)]


def _table_sql(path: Path) -> str:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT sql FROM sqlite_master WHERE name = 'readings'").fetchone()[0]


def test_the_migration_keeps_the_readings_and_clusters_them_on_the_key(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    engine = create_engine(f"sqlite:///{path}")
    try:
        with engine.begin() as conn:
            command.upgrade(alembic_config(conn), "0001")
        assert "WITHOUT ROWID" not in _table_sql(path)
        with sqlite3.connect(path) as raw:
            raw.executemany("INSERT INTO readings VALUES (?, ?, ?, ?)", ROWS)

        with engine.begin() as conn:
            command.upgrade(alembic_config(conn), "heads")
        assert _table_sql(path).rstrip().endswith("WITHOUT ROWID")
        with sqlite3.connect(path) as raw:
            assert raw.execute("SELECT * FROM readings ORDER BY point").fetchall() == ROWS
            # What ingest relies on: the key still refuses a second row for the same point and time.
            raw.execute(
                "INSERT INTO readings VALUES ('meter-1', 'kwh', 1790000000000, 9.9)"
                " ON CONFLICT (device_id, point, ts_ms) DO NOTHING"
            )
            assert raw.execute("SELECT count(*), sum(value) FROM readings").fetchone() == (2, 231.3)

        def differences(conn: Connection) -> list[object]:
            diffs = compare_metadata(MigrationContext.configure(conn), Base.metadata)
            return [d for d in diffs if "readings" in repr(d)]

        with engine.connect() as conn:
            assert differences(conn) == []

        with engine.begin() as conn:
            command.downgrade(alembic_config(conn), "readings@0001")
        assert "WITHOUT ROWID" not in _table_sql(path)
        with sqlite3.connect(path) as raw:
            assert raw.execute("SELECT * FROM readings ORDER BY point").fetchall() == ROWS
    finally:
        engine.dispose()


def test_a_schema_made_from_the_tables_has_the_same_readings_table(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'c.db'}")
    try:
        Base.metadata.create_all(engine)
    finally:
        engine.dispose()
    assert _table_sql(tmp_path / "c.db").rstrip().endswith("WITHOUT ROWID")


@contextlib.contextmanager
def _at_heads(path: Path) -> Iterator[Engine]:
    """A SQLite file migrated to every branch's head."""
    engine = create_engine(f"sqlite:///{path}")
    try:
        with engine.begin() as conn:
            command.upgrade(alembic_config(conn), "heads")
        yield engine
    finally:
        engine.dispose()


def _differences(engine: Engine, table: str) -> list[object]:
    """What the migrated ``table`` lacks or has beyond the models (compare_metadata), for that table."""
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        return [d for d in compare_metadata(ctx, Base.metadata) if f"'{table}'" in repr(d)]


def _downgrade(engine: Engine, target: str) -> None:
    with engine.begin() as conn:
        command.downgrade(alembic_config(conn), target)


def test_the_rejected_events_migration_makes_the_table_the_model_declares(tmp_path: Path) -> None:
    with _at_heads(tmp_path / "r.db") as engine:
        assert _differences(engine, "rejected_events") == []
        _downgrade(engine, "rejected_events@0001")
        with engine.connect() as conn:
            assert not conn.dialect.has_table(conn, "rejected_events")


@pytest.mark.parametrize(
    ("branch", "table", "column"),
    [("device_names", "devices", "name"), ("site_timezones", "sites", "timezone")],
)
def test_a_column_migration_adds_what_the_model_declares_and_takes_it_away_again(
    tmp_path: Path, branch: str, table: str, column: str
) -> None:
    def columns() -> set[str]:
        with engine.connect() as conn:
            return {c["name"] for c in inspect(conn).get_columns(table)}

    with _at_heads(tmp_path / "n.db") as engine:
        assert _differences(engine, table) == []
        assert column in columns()
        _downgrade(engine, f"{branch}@0001")
        assert column not in columns()


def test_the_command_log_migration_makes_the_indexes_the_model_declares(tmp_path: Path) -> None:
    def indexes() -> set[str]:
        with engine.connect() as conn:
            return {i["name"] for i in inspect(conn).get_indexes("commands")}

    with _at_heads(tmp_path / "c.db") as engine:
        assert _differences(engine, "commands") == []
        assert {"ix_commands_site_issued", "ix_commands_issued"} <= indexes()
        _downgrade(engine, "command_log@0001")
        assert indexes() == {"ix_commands_device_id", "ix_commands_status_expires"}


def test_the_append_only_migration_guards_the_audit_trails_and_its_downgrade_lifts_the_guard(
    tmp_path: Path,
) -> None:
    path = tmp_path / "a.db"

    def rewrite() -> None:
        with sqlite3.connect(path) as raw:
            raw.execute("UPDATE auth_audit SET action = 'rewritten'")

    with _at_heads(path) as engine:
        with sqlite3.connect(path) as raw:
            raw.execute("INSERT INTO auth_audit (at, action) VALUES ('2026-11-24 08:00:00', 'login')")
        with pytest.raises(sqlite3.IntegrityError, match="auth_audit is append-only: UPDATE refused"):
            rewrite()
        _downgrade(engine, "append_only_audit@-1")
        rewrite()
        with sqlite3.connect(path) as raw:
            assert raw.execute("SELECT action FROM auth_audit").fetchall() == [("rewritten",)]
