"""Access credentials in the cloud: cards, PINs, plates and visitor passes, versioned and synced to gateways.

The gateway decides access on its own (``edge/access.py``); the cloud owns the list and keeps each
gateway's copy at the latest version (``docs/autonomy.md``, "Cloud side").
"""

from cloud.access.plan import Plan, SyncKind, compact_changes, plan_sync
from cloud.access.service import AccessService, AccessStats, Conflict, InvalidCredential

__all__ = [
    "AccessService",
    "AccessStats",
    "Conflict",
    "InvalidCredential",
    "Plan",
    "SyncKind",
    "compact_changes",
    "plan_sync",
]
