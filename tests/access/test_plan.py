"""What the cloud sends a gateway, decided from versions alone (no I/O)."""

from __future__ import annotations

import pytest

from cloud.access.plan import SyncKind, compact_changes, plan_sync


@pytest.mark.parametrize(
    ("version", "count", "expected", "from_version"),
    [
        (10, 5, SyncKind.NONE, 10),  # up to date
        (10, None, SyncKind.NONE, 10),  # what we sent: nothing new
        (10, 4, SyncKind.FULL, 0),  # right version, wrong contents
        (7, 5, SyncKind.DELTA, 7),
        (4, 5, SyncKind.DELTA, 4),  # exactly at the floor: the log has everything after it
        (3, 5, SyncKind.FULL, 0),  # older than the log
        (0, 0, SyncKind.FULL, 0),  # fresh or wiped gateway
        (11, 5, SyncKind.FULL, 0),  # a version this cloud never issued
        (None, None, SyncKind.FULL, 0),  # never reported
    ],
)
def test_plan(version: int | None, count: int | None, expected: SyncKind, from_version: int) -> None:
    plan = plan_sync(version, count, latest=10, floor=4, site_count=5)
    assert plan.kind is expected, plan.why
    assert plan.from_version == from_version


def test_compact_changes_keeps_the_last_op_per_credential_in_version_order() -> None:
    changes = [
        (5, "a", "upsert"),
        (3, "b", "upsert"),
        (4, "a", "delete"),
        (6, "b", "delete"),
        (7, "c", "upsert"),
    ]
    assert compact_changes(changes) == (["a", "c"], ["b"])
    assert compact_changes([]) == ([], [])
