"""The gateway's own copy of who may open what: credentials in SQLite, indexed in memory.

Access decisions must not wait for the internet, nor for the disk: every credential is held in a
dictionary keyed by (kind family, value), loaded from SQLite at start and written through on every
sync. Only visitor-pass use counts are written on the decision path, because a pass with
``max_uses`` must not be reusable after a gateway restart.

The list carries a version (see :mod:`protocol.credentials`). A delta is applied only if its
``from_version`` is the version held; otherwise it is refused and the cloud, told our version on
``up/sync``, sends the missing delta or a full list. A sync is applied in one SQLite transaction, so
a crash half-way leaves the previous version intact.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Self

import structlog

from protocol.credentials import Credential, CredentialSync

if TYPE_CHECKING:
    from steward.config import SiteConfig

__all__ = ["ApplyOutcome", "CredentialStore", "SyncResult", "local_db_path"]

log = structlog.get_logger("steward.credentials")

# Seconds a writer waits for another connection's transaction (linkage shares the file).
_BUSY_TIMEOUT_S = 5.0
OP_TIMEOUT_S = 10.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS credential_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS credentials (id TEXT PRIMARY KEY, body TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS credential_uses (id TEXT PRIMARY KEY, uses INTEGER NOT NULL) WITHOUT ROWID;
"""


class ApplyOutcome(StrEnum):
    APPLIED = "applied"
    GAP = "gap"  # from_version is not ours: a delta went missing or came out of order
    STALE = "stale"  # already at or past to_version (a redelivery)


@dataclass(frozen=True, slots=True)
class SyncResult:
    outcome: ApplyOutcome
    version: int
    reason: str | None = None


def local_db_path(site: SiteConfig) -> Path:
    """The gateway's own state (credentials, fire linkage) lives next to its event buffer."""
    buf = site.buffer.path
    return buf.with_name(f"{buf.stem}-local.db")


def _family(kind: str) -> str:
    # A keypad cannot tell a resident's PIN from a visitor's; one lookup must find both.
    return "pin" if kind in ("pin", "visitor_pin") else kind


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=_BUSY_TIMEOUT_S, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


class CredentialStore:
    """Credentials for one gateway. Create with :meth:`open`; all methods are for one event loop."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.version = 0
        self._by_id: dict[str, Credential] = {}
        self._index: dict[tuple[str, str], list[Credential]] = {}
        self._uses: dict[str, int] = {}
        # Syncs and use counts go to the disk one at a time, in the order they were decided.
        self._write_lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: str | Path) -> Self:
        store = cls(Path(path))
        store.path.parent.mkdir(parents=True, exist_ok=True)
        async with asyncio.timeout(OP_TIMEOUT_S):
            version, creds, uses = await asyncio.to_thread(store._load)
        store.version = version
        store._uses = uses
        store._replace(creds)
        log.info("credentials.loaded", path=str(store.path), version=version, count=len(creds))
        return store

    def _load(self) -> tuple[int, list[Credential], dict[str, int]]:
        conn = _connect(self.path)
        try:
            conn.executescript(_SCHEMA)
            row = conn.execute("SELECT value FROM credential_meta WHERE key = 'version'").fetchone()
            creds = [
                Credential.model_validate_json(b) for (b,) in conn.execute("SELECT body FROM credentials")
            ]
            uses = dict(conn.execute("SELECT id, uses FROM credential_uses").fetchall())
            return (int(row[0]) if row else 0), creds, uses
        finally:
            conn.close()

    # ---- reads (memory only) ---------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._by_id)

    def get(self, credential_id: str) -> Credential | None:
        return self._by_id.get(credential_id)

    def lookup(self, kind: str, value: str) -> list[Credential]:
        """Every credential of ``kind``'s family whose value is ``value`` (PINs may be shared)."""
        return self._index.get((_family(kind), value), [])

    def uses(self, credential_id: str) -> int:
        return self._uses.get(credential_id, 0)

    def _replace(self, creds: list[Credential]) -> None:
        self._by_id = {c.id: c for c in creds}
        self._reindex()

    def _reindex(self) -> None:
        index: dict[tuple[str, str], list[Credential]] = {}
        for c in self._by_id.values():
            index.setdefault((_family(c.kind), c.value), []).append(c)
        self._index = index

    # ---- writes ----------------------------------------------------------------------------
    async def apply(self, sync: CredentialSync) -> SyncResult:
        """Apply a delta at our version, or a full list; refuse gaps and redeliveries."""
        async with self._write_lock:
            if not sync.full:
                if sync.to_version <= self.version:
                    return SyncResult(ApplyOutcome.STALE, self.version, f"already at version {self.version}")
                if sync.from_version != self.version:
                    return SyncResult(
                        ApplyOutcome.GAP,
                        self.version,
                        f"delta is from version {sync.from_version}; this gateway is at {self.version}",
                    )
            async with asyncio.timeout(OP_TIMEOUT_S):
                await asyncio.to_thread(self._write_sync, sync)
            if sync.full:
                kept = {c.id for c in sync.upserts}
                self._by_id = {c.id: c for c in sync.upserts}
                self._uses = {k: v for k, v in self._uses.items() if k in kept}
            else:
                for cid in sync.deletes:
                    self._by_id.pop(cid, None)
                    self._uses.pop(cid, None)
                for c in sync.upserts:
                    self._by_id[c.id] = c
            self._reindex()
            self.version = sync.to_version
            return SyncResult(ApplyOutcome.APPLIED, self.version)

    def _write_sync(self, sync: CredentialSync) -> None:
        conn = _connect(self.path)
        try:
            conn.execute("BEGIN IMMEDIATE")
            if sync.full:
                conn.execute("DELETE FROM credentials")
                # Use counts survive a full sync for passes that are still in it: re-sending the
                # list must not hand a visitor fresh entries.
                keep = [c.id for c in sync.upserts]
                conn.execute("CREATE TEMP TABLE IF NOT EXISTS keep_ids (id TEXT PRIMARY KEY)")
                conn.execute("DELETE FROM keep_ids")
                conn.executemany("INSERT INTO keep_ids VALUES (?)", [(k,) for k in keep])
                conn.execute("DELETE FROM credential_uses WHERE id NOT IN (SELECT id FROM keep_ids)")
            else:
                conn.executemany("DELETE FROM credentials WHERE id = ?", [(d,) for d in sync.deletes])
                conn.executemany("DELETE FROM credential_uses WHERE id = ?", [(d,) for d in sync.deletes])
            conn.executemany(
                "INSERT OR REPLACE INTO credentials (id, body) VALUES (?, ?)",
                [(c.id, c.model_dump_json()) for c in sync.upserts],
            )
            conn.execute(
                "INSERT OR REPLACE INTO credential_meta (key, value) VALUES ('version', ?)",
                (json.dumps(sync.to_version),),
            )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        finally:
            conn.close()

    async def take_use(self, credential_id: str, max_uses: int | None) -> int | None:
        """Count one use, durably; return the uses so far (this one included), or None if none are left.

        Check and count happen under one lock so two presentations of a last-entry pass cannot both
        get in.
        """
        async with self._write_lock:
            uses = self._uses.get(credential_id, 0) + 1
            if max_uses is not None and uses > max_uses:
                return None
            async with asyncio.timeout(OP_TIMEOUT_S):
                await asyncio.to_thread(self._write_use, credential_id, uses)
            self._uses[credential_id] = uses
            return uses

    def _write_use(self, credential_id: str, uses: int) -> None:
        conn = _connect(self.path)
        try:
            conn.execute(
                "INSERT OR REPLACE INTO credential_uses (id, uses) VALUES (?, ?)", (credential_id, uses)
            )
        finally:
            conn.close()
