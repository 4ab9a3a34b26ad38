"""What to send a gateway, decided without I/O: nothing, a delta from its version, or the full list.

The site's credential list has a version (``latest``); the change log lets the cloud build a delta from
any version ``floor <= v < latest``. A gateway whose version the cloud cannot vouch for gets the full
list: never reported, version 0 (a fresh or wiped gateway), older than the log reaches, newer than the
cloud ever issued (the cloud's store was restored from a backup), or at ``latest`` but holding a
different number of credentials than the cloud has at ``latest``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

__all__ = ["Plan", "SyncKind", "compact_changes", "plan_sync"]


class SyncKind(StrEnum):
    NONE = "none"
    DELTA = "delta"
    FULL = "full"


@dataclass(frozen=True, slots=True)
class Plan:
    kind: SyncKind
    from_version: int = 0
    why: str = ""


def plan_sync(
    gateway_version: int | None,
    gateway_count: int | None,
    *,
    latest: int,
    floor: int,
    site_count: int,
) -> Plan:
    """``gateway_count`` is None when we only know what we sent, not what the gateway reported."""
    v = gateway_version
    if v is None:
        return Plan(SyncKind.FULL, why="version unknown")
    if v == latest:
        if gateway_count is not None and gateway_count != site_count:
            return Plan(
                SyncKind.FULL,
                why=f"at version {v} but holds {gateway_count} credentials, the cloud has {site_count}",
            )
        return Plan(SyncKind.NONE, v, "up to date")
    if v > latest:
        return Plan(SyncKind.FULL, why=f"version {v} is newer than the cloud's {latest}")
    if v == 0:
        return Plan(SyncKind.FULL, why="empty gateway")
    if v < floor:
        return Plan(SyncKind.FULL, why=f"version {v} is older than the change log (from {floor})")
    return Plan(SyncKind.DELTA, v, f"delta {v} -> {latest}")


def compact_changes(changes: Iterable[tuple[int, str, str]]) -> tuple[list[str], list[str]]:
    """(version, credential id, op) in any order -> (ids to upsert, ids to delete): the last op wins."""
    last: dict[str, tuple[int, str]] = {}
    for version, cid, op in changes:
        if cid not in last or version >= last[cid][0]:
            last[cid] = (version, op)
    ordered = sorted(last.items(), key=lambda item: (item[1][0], item[0]))
    upserts = [cid for cid, (_, op) in ordered if op == "upsert"]
    deletes = [cid for cid, (_, op) in ordered if op == "delete"]
    return upserts, deletes
