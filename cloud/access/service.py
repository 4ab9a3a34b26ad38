"""The cloud's side of access: credentials, visitor passes, and keeping every gateway's copy in step.

Changes come through the API (:meth:`AccessService.create` and friends). Each takes the site's next
version in the same transaction as the change (see :mod:`cloud.access.store`), then wakes the delivery
loop, which publishes to every online gateway of the site a delta from the version it is expected at.
A gateway's :class:`~protocol.credentials.SyncState` on ``up/sync`` (sent on every connect and after
every sync) says where it really is; the loop answers with what :func:`~cloud.access.plan.plan_sync`
decides: nothing, the delta, or the full list. A gateway left behind (a publish lost while the cloud's
broker link was down) is caught by a periodic reconcile.

Messages are QoS 1, never retained, at most one in flight per gateway per round, and idempotent at the
gateway (a redelivered or out-of-date delta is ignored and answered with its version), so duplicates
cost a message, never correctness.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import structlog
from pydantic import ValidationError
from sqlalchemy import and_, or_, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from cloud import store as core_store
from cloud.access import store
from cloud.access.plan import SyncKind, plan_sync
from cloud.access.schemas import CredentialCreate, CredentialPatch, VisitorPassCreate
from cloud.access.tables import AccessSite, CredentialRow, GatewaySync
from cloud.db import make_read_sessions
from cloud.errors import CloudError, NotFound
from cloud.ingest import Rejected
from cloud.settings import CloudSettings
from cloud.tables import Device, EventRow, Gateway
from protocol.credentials import Credential, CredentialSync, SyncState, hash_secret, normalise_plate
from protocol.ids import new_id
from protocol.models import utcnow
from protocol.topics import Topics
from steward.mqtt import MqttClient, MqttError

__all__ = ["AccessService", "AccessStats", "Conflict", "InvalidCredential"]

log = structlog.get_logger("steward.cloud.access")

# Device kinds a credential can open (the gateway's AccessControl knows how to open each).
OPENABLE = frozenset({"door_access", "barrier_gate", "video_intercom", "unknown"})
_CARD = re.compile(r"^[0-9A-Za-z][0-9A-Za-z-]{0,63}$")
_PIN = re.compile(r"^[0-9]{4,12}$")
_PLATE = re.compile(r"^\S{2,16}$")
# Gateway clocks may be off; look for a pass's uses a little before it was issued.
_USE_MARGIN = timedelta(hours=1)


class Conflict(CloudError):
    status = 409
    code = "conflict"


class InvalidCredential(CloudError):
    status = 422
    code = "invalid_credential"


@dataclass(slots=True)
class AccessStats:
    states_received: int = 0
    deltas_sent: int = 0
    fulls_sent: int = 0
    send_failed: int = 0


@dataclass(frozen=True, slots=True)
class _Target:
    site_id: str
    version: int | None  # where the gateway is (reported) or should be (what we sent)
    count: int | None  # credentials it reported holding; None if it did not report


class AccessService:
    def __init__(
        self,
        settings: CloudSettings,
        sessions: async_sessionmaker[AsyncSession],
        mqtt: MqttClient,
        *,
        keep_changes: int = 10_000,
        resync_interval_s: float = 30.0,
        publish_timeout_s: float = 10.0,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.read_sessions = make_read_sessions(sessions)
        self.mqtt = mqtt
        self.keep_changes = keep_changes
        self.resync_interval_s = resync_interval_s
        self.publish_timeout_s = publish_timeout_s
        self.stats = AccessStats()
        self._pending_sites: set[str] = set()
        self._pending_gateways: dict[str, _Target] = {}
        self._wake = asyncio.Event()

    # ---- credentials -------------------------------------------------------------------------
    async def create(self, site_id: str, body: CredentialCreate, by: str) -> CredentialRow:
        now = utcnow()
        async with self.sessions() as s, s.begin():
            site = await store.ensure_site(s, site_id, now)
            value = self._stored_value(body.kind, body.value, _salt(site))
            await self._check_doors(s, site_id, body.doors)
            cid = body.id or f"c-{new_id()}"
            if await s.get(CredentialRow, cid) is not None:
                raise Conflict(f"credential {cid!r} exists already")
            if not body.revoked:
                await self._check_unique(s, site_id, body.kind, value, exclude=cid)
            row = CredentialRow(
                id=cid,
                site_id=site_id,
                kind=body.kind,
                value=value,
                holder=body.holder,
                doors=list(dict.fromkeys(body.doors)),
                valid_from=body.valid_from,
                valid_until=body.valid_until,
                max_uses=body.max_uses,
                revoked=body.revoked,
                created_by=by,
                created_at=now,
                updated_at=now,
            )
            _check_wire(row)
            row.version = await store.record_change(
                s, site_id, [(cid, "upsert")], by=by, now=now, keep=self.keep_changes
            )
            s.add(row)
            await _flush(s, cid)
        log.info(
            "access.credential_created", site=site_id, credential=cid, kind=row.kind, version=row.version
        )
        self.changed(site_id)
        return row

    async def issue_pass(self, site_id: str, body: VisitorPassCreate, by: str) -> tuple[CredentialRow, str]:
        """A visitor pass; returns it with its code, which is not stored and cannot be read again."""
        now = utcnow()
        valid_from = body.valid_from or now
        if body.valid_until <= max(valid_from, now):
            raise InvalidCredential("valid_until must be in the future and after valid_from")
        kind = "visitor_pin" if body.kind == "pin" else "visitor_qr"
        async with self.sessions() as s, s.begin():
            site = await store.ensure_site(s, site_id, now)
            await self._check_doors(s, site_id, body.doors)
            code, value = await self._new_code(s, site, kind, body.pin_digits)
            cid = f"v-{new_id()}"
            row = CredentialRow(
                id=cid,
                site_id=site_id,
                kind=kind,
                value=value,
                holder=body.holder,
                doors=list(dict.fromkeys(body.doors)),
                valid_from=valid_from,
                valid_until=body.valid_until,
                max_uses=body.max_uses,
                revoked=False,
                created_by=by,
                created_at=now,
                updated_at=now,
            )
            _check_wire(row)
            row.version = await store.record_change(
                s, site_id, [(cid, "upsert")], by=by, now=now, keep=self.keep_changes
            )
            s.add(row)
            await _flush(s, cid)
        log.info("access.pass_issued", site=site_id, credential=cid, kind=kind, version=row.version)
        self.changed(site_id)
        return row, code

    async def update(
        self, site_id: str, credential_id: str, patch: CredentialPatch, by: str
    ) -> CredentialRow:
        now = utcnow()
        given = patch.model_fields_set
        async with self.sessions() as s, s.begin():
            row = await self._row(s, site_id, credential_id)
            site = await store.ensure_site(s, site_id, now)
            wanted: dict[str, Any] = {}
            if "value" in given and patch.value is not None:
                if row.kind.startswith("visitor_"):
                    raise InvalidCredential("a visitor pass's code cannot change; issue a new pass")
                wanted["value"] = self._stored_value(row.kind, patch.value, _salt(site))
            for name in ("holder", "doors", "revoked"):
                if name in given and getattr(patch, name) is not None:
                    wanted[name] = getattr(patch, name)
            for name in ("valid_from", "valid_until", "max_uses"):
                if name in given:
                    wanted[name] = getattr(patch, name)
            if "doors" in wanted:
                wanted["doors"] = list(dict.fromkeys(wanted["doors"]))
            changed = {k: v for k, v in wanted.items() if getattr(row, k) != v}
            if not changed:
                return row
            if "doors" in changed:
                await self._check_doors(s, site_id, changed["doors"])
            if not changed.get("revoked", row.revoked) and ("value" in changed or "revoked" in changed):
                await self._check_unique(
                    s, site_id, row.kind, changed.get("value", row.value), exclude=row.id
                )
            for k, v in changed.items():
                setattr(row, k, v)
            _check_wire(row)
            row.version = await store.record_change(
                s, site_id, [(row.id, "upsert")], by=by, now=now, keep=self.keep_changes
            )
            row.updated_at = now
        log.info(
            "access.credential_changed",
            site=site_id,
            credential=row.id,
            fields=sorted(changed),
            revoked=row.revoked,
            version=row.version,
        )
        self.changed(site_id)
        return row

    async def delete(self, site_id: str, credential_id: str, by: str) -> int:
        """Remove a credential from the site and every gateway; returns the new version."""
        now = utcnow()
        async with self.sessions() as s, s.begin():
            row = await self._row(s, site_id, credential_id)
            version = await store.record_change(
                s, site_id, [(row.id, "delete")], by=by, now=now, keep=self.keep_changes
            )
            await s.delete(row)
        log.info("access.credential_deleted", site=site_id, credential=credential_id, version=version)
        self.changed(site_id)
        return version

    async def get(self, site_id: str, credential_id: str) -> CredentialRow:
        async with self.read_sessions() as s:
            return await self._row(s, site_id, credential_id)

    async def list(
        self,
        site_id: str,
        *,
        kind: str | None = None,
        revoked: bool | None = None,
        limit: int = 100,
        after: str | None = None,
    ) -> tuple[list[CredentialRow], int, bool]:
        """A page of the site's credentials by id, the site's version, and whether more follow."""
        query = select(CredentialRow).where(CredentialRow.site_id == site_id)
        if kind is not None:
            query = query.where(CredentialRow.kind == kind)
        if revoked is not None:
            query = query.where(CredentialRow.revoked.is_(revoked))
        if after is not None:
            query = query.where(CredentialRow.id > after)
        async with self.read_sessions() as s:
            rows = list((await s.execute(query.order_by(CredentialRow.id).limit(limit + 1))).scalars())
            site = await s.get(AccessSite, site_id)
        version = site.version if site is not None else store.FIRST_VERSION
        return rows[:limit], version, len(rows) > limit

    async def pass_events(self, site_id: str, credential_id: str) -> tuple[CredentialRow, list[EventRow]]:
        """A visitor pass and its ``access.granted``/``access.denied`` events, oldest first."""
        async with self.read_sessions() as s:
            row = await self._row(s, site_id, credential_id)
            if not row.kind.startswith("visitor_"):
                raise NotFound(f"{credential_id!r} is a {row.kind}, not a visitor pass")
            events = (
                await s.execute(
                    select(EventRow)
                    .where(
                        EventRow.type.in_(("access.granted", "access.denied")),
                        EventRow.ts >= row.created_at - _USE_MARGIN,
                        EventRow.site_id == site_id,
                        EventRow.data["credential_id"].as_string() == credential_id,
                    )
                    .order_by(EventRow.ts, EventRow.id)
                )
            ).scalars()
            return row, list(events)

    # ---- site settings and sync overview -------------------------------------------------------
    async def site(self, site_id: str) -> AccessSite:
        async with self.sessions() as s, s.begin():
            return await store.ensure_site(s, site_id, utcnow())

    async def set_salt(self, site_id: str, salt: str | None) -> AccessSite:
        """Change the PIN salt; refused while hashed credentials exist (they could no longer match)."""
        async with self.sessions() as s, s.begin():
            site = await store.ensure_site(s, site_id, utcnow())
            hashed = await s.scalar(
                select(CredentialRow.id)
                .where(
                    CredentialRow.site_id == site_id,
                    CredentialRow.kind.in_(("pin", "visitor_pin", "visitor_qr")),
                )
                .limit(1)
            )
            if hashed is not None and salt != site.pin_salt:
                raise Conflict(
                    "the site has PINs or visitor passes hashed with the current salt; "
                    "delete them before changing it"
                )
            site.pin_salt = salt
            site.updated_at = utcnow()
        return site

    async def sync_overview(
        self, site_id: str
    ) -> tuple[AccessSite, int, list[tuple[GatewaySync, bool | None]]]:
        async with self.sessions() as s, s.begin():
            site = await store.ensure_site(s, site_id, utcnow())
            count = await store.site_count(s, site_id)
            rows = (
                await s.execute(
                    select(GatewaySync, Gateway.online)
                    .outerjoin(Gateway, Gateway.id == GatewaySync.gateway_id)
                    .where(GatewaySync.site_id == site_id)
                    .order_by(GatewaySync.gateway_id)
                )
            ).all()
        return site, count, [(g, online) for g, online in rows]

    # ---- sync ----------------------------------------------------------------------------------
    def changed(self, site_id: str) -> None:
        """A site's list changed: push it to the site's gateways (coalesced by the delivery loop)."""
        self._pending_sites.add(site_id)
        self._wake.set()

    async def handle_sync_state(self, topics: Topics, payload: bytes) -> None:
        """Ingest handler for ``up/sync``: remember where the gateway is, queue what it needs."""
        try:
            state = SyncState.model_validate_json(payload)
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            where = ".".join(map(str, first["loc"])) or "payload"
            kind = "malformed_json" if first["type"] == "json_invalid" else "invalid_schema"
            raise Rejected(kind, f"SyncState: {where}: {first['msg']}") from None
        if (state.site_id, state.gateway_id) != (topics.site_id, topics.gateway_id):
            raise Rejected(
                "gateway_mismatch",
                f"SyncState for {state.site_id}/{state.gateway_id} on {topics.site_id}/{topics.gateway_id}",
            )
        now = utcnow()
        async with self.sessions() as s, s.begin():
            await core_store.touch_gateway(s, state.site_id, state.gateway_id, now)
            await store.ensure_site(s, state.site_id, now)
            await store.note_reported(
                s,
                state.site_id,
                state.gateway_id,
                version=state.version,
                count=state.credentials,
                rejected=state.rejected,
                now=now,
            )
        self.stats.states_received += 1
        log.info(
            "access.sync_state",
            site=state.site_id,
            gateway=state.gateway_id,
            version=state.version,
            credentials=state.credentials,
            rejected=state.rejected,
        )
        self._pending_gateways[state.gateway_id] = _Target(state.site_id, state.version, state.credentials)
        self._wake.set()

    async def run(self) -> None:
        """Deliver syncs and reconcile stragglers until cancelled."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._deliver_loop(), name="access:deliver")
            tg.create_task(self._reconcile_loop(), name="access:reconcile")

    async def _deliver_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self.deliver_once()
            except SQLAlchemyError as exc:
                log.error("access.deliver_store_failed", error=str(exc)[:500])
                await asyncio.sleep(1)

    async def _reconcile_loop(self) -> None:
        while True:
            await asyncio.sleep(self.resync_interval_s)
            try:
                await self.reconcile_once()
            except SQLAlchemyError as exc:
                log.error("access.reconcile_store_failed", error=str(exc)[:500])

    async def deliver_once(self) -> None:
        sites, self._pending_sites = self._pending_sites, set()
        reports, self._pending_gateways = self._pending_gateways, {}
        targets: dict[str, _Target] = {}
        if sites:
            async with self.read_sessions() as s:
                rows = (
                    await s.execute(
                        select(
                            Gateway.id,
                            Gateway.site_id,
                            Gateway.online,
                            GatewaySync.reported_version,
                            GatewaySync.sent_version,
                        )
                        .outerjoin(GatewaySync, GatewaySync.gateway_id == Gateway.id)
                        .where(Gateway.site_id.in_(sorted(sites)))
                    )
                ).all()
            for gateway_id, site_id, online, reported, sent in rows:
                if not online:
                    continue  # it reports its version when it reconnects
                known = [v for v in (reported, sent) if v is not None]
                targets[gateway_id] = _Target(site_id, max(known) if known else None, None)
        targets.update(reports)  # what a gateway says beats what we expect
        if not targets:
            return
        built: dict[tuple[str, SyncKind, int, int], CredentialSync] = {}
        async with asyncio.TaskGroup() as tg:
            for gateway_id, target in targets.items():
                tg.create_task(self._send(gateway_id, target, built), name=f"access:sync:{gateway_id}")

    async def reconcile_once(self) -> None:
        """Queue gateways that reported an old version and were not sent anything for a while."""
        now = utcnow()
        quiet = now - timedelta(seconds=self.resync_interval_s)
        async with self.read_sessions() as s:
            rows = (
                await s.execute(
                    select(GatewaySync.gateway_id, GatewaySync.site_id, GatewaySync.reported_version)
                    .join(AccessSite, AccessSite.site_id == GatewaySync.site_id)
                    .join(Gateway, Gateway.id == GatewaySync.gateway_id)
                    .where(
                        Gateway.online.is_(True),
                        GatewaySync.reported_version.is_not(None),
                        GatewaySync.reported_version != AccessSite.version,
                        or_(GatewaySync.sent_at.is_(None), GatewaySync.sent_at < quiet),
                        or_(GatewaySync.reported_at.is_(None), GatewaySync.reported_at < quiet),
                    )
                )
            ).all()
        for gateway_id, site_id, version in rows:
            log.info("access.resync", gateway=gateway_id, site=site_id, reported=version)
            self._pending_gateways.setdefault(gateway_id, _Target(site_id, version, None))
        if rows:
            self._wake.set()

    async def _send(
        self, gateway_id: str, target: _Target, built: dict[tuple[str, SyncKind, int, int], CredentialSync]
    ) -> None:
        bound = log.bind(site=target.site_id, gateway=gateway_id)
        try:
            async with self.sessions() as s, s.begin():
                if self.settings.is_postgres:
                    # One snapshot for version, change log and credentials.
                    await s.connection(execution_options={"isolation_level": "REPEATABLE READ"})
                site = await store.ensure_site(s, target.site_id, utcnow())
                count = await store.site_count(s, site.site_id) if target.count is not None else 0
                plan = plan_sync(
                    target.version, target.count, latest=site.version, floor=site.log_floor, site_count=count
                )
                if plan.kind is SyncKind.NONE:
                    return
                key = (site.site_id, plan.kind, plan.from_version, site.version)
                sync = built.get(key)
                if sync is None:
                    sync = await store.build_sync(s, site, gateway_id, plan)
                    assert sync is not None
                    built[key] = sync
                else:
                    sync = sync.model_copy(update={"gateway_id": gateway_id})
            topic = Topics(self.settings.topic_prefix, target.site_id, gateway_id).credentials
            await self.mqtt.publish(
                topic, sync.to_bytes(), qos=1, retain=False, timeout=self.publish_timeout_s
            )
            async with self.sessions() as s, s.begin():
                await store.note_sent(
                    s, site.site_id, gateway_id, version=sync.to_version, full=sync.full, now=utcnow()
                )
        except (MqttError, SQLAlchemyError, ValidationError) as exc:
            # Not lost: the gateway's next SyncState (every reconnect) or the reconcile loop retries.
            self.stats.send_failed += 1
            bound.warning("access.sync_not_sent", error=str(exc)[:500])
            return
        if sync.full:
            self.stats.fulls_sent += 1
        else:
            self.stats.deltas_sent += 1
        bound.info(
            "access.sync_sent",
            full=sync.full,
            from_version=sync.from_version,
            to_version=sync.to_version,
            upserts=len(sync.upserts),
            deletes=len(sync.deletes),
            why=plan.why,
        )

    # ---- helpers -------------------------------------------------------------------------------
    async def _row(self, s: AsyncSession, site_id: str, credential_id: str) -> CredentialRow:
        row = await s.get(CredentialRow, credential_id)
        if row is None or row.site_id != site_id:
            raise NotFound(f"no credential {credential_id!r} at site {site_id!r}")
        return row

    @staticmethod
    def _stored_value(kind: str, raw: str, salt: str) -> str:
        text = raw.strip()
        if kind == "card":
            if not _CARD.match(text):
                raise InvalidCredential(f"card number {raw!r}: letters, digits and '-' only")
            return text
        if kind == "plate":
            plate = normalise_plate(text)
            if not _PLATE.match(plate):
                raise InvalidCredential(f"plate {raw!r} is not a plate")
            return plate
        if kind == "pin":
            if not _PIN.match(text):
                raise InvalidCredential("a PIN is 4 to 12 digits")
            return hash_secret(salt, text)
        raise InvalidCredential(f"credential kind {kind!r} cannot be set this way")

    @staticmethod
    async def _check_doors(s: AsyncSession, site_id: str, doors: list[str]) -> None:
        """Doors must be door/gate/intercom devices of the site, once the site's devices are known."""
        kinds = dict((await s.execute(select(Device.id, Device.kind).where(Device.site_id == site_id))).all())
        if not kinds:
            return  # a site being set up before its gateway first connected
        problems = [
            f"{d!r} is not a device of site {site_id!r}" if d not in kinds else f"{d!r} is a {kinds[d]}"
            for d in doors
            if kinds.get(d) not in OPENABLE
        ]
        if problems:
            raise InvalidCredential("doors: " + "; ".join(problems))

    @staticmethod
    async def _check_unique(s: AsyncSession, site_id: str, kind: str, value: str, exclude: str) -> None:
        """Cards and plates identify one holder; a resident PIN must not equal a live visitor PIN."""
        if kind in ("card", "plate"):
            kinds: tuple[str, ...] = (kind,)
        elif kind == "pin":
            kinds = ("visitor_pin",)
        else:
            return
        other = await s.scalar(
            select(CredentialRow).where(
                CredentialRow.site_id == site_id,
                CredentialRow.kind.in_(kinds),
                CredentialRow.value == value,
                CredentialRow.revoked.is_(False),
                CredentialRow.id != exclude,
            )
        )
        if other is None:
            return
        if kind == "pin":
            raise Conflict("that PIN is in use by a visitor pass; choose another")
        raise Conflict(f"{kind} {value} is already credential {other.id!r} ({other.holder}); revoke it first")

    @staticmethod
    async def _new_code(s: AsyncSession, site: AccessSite, kind: str, digits: int) -> tuple[str, str]:
        """A fresh code and its digest. A visitor PIN must match no other PIN of the site: the gateway
        opens for any credential with the typed value, so a clash would lend someone else's doors."""
        salt = _salt(site)
        if kind == "visitor_qr":
            code = secrets.token_urlsafe(18)
            return code, hash_secret(salt, code)
        for _ in range(50):
            code = "".join(secrets.choice("0123456789") for _ in range(digits))
            value = hash_secret(salt, code)
            clash = await s.scalar(
                select(CredentialRow.id).where(
                    and_(
                        CredentialRow.site_id == site.site_id,
                        CredentialRow.kind.in_(("pin", "visitor_pin")),
                        CredentialRow.value == value,
                    )
                )
            )
            if clash is None:
                return code, value
        raise Conflict(f"no free {digits}-digit PIN found; use more digits or a QR pass")


def _salt(site: AccessSite) -> str:
    return site.pin_salt or site.site_id


def _check_wire(row: CredentialRow) -> Credential:
    try:
        return store.to_wire(row)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        raise InvalidCredential(str(first["msg"]).removeprefix("Value error, ")) from None


async def _flush(s: AsyncSession, cid: str) -> None:
    try:
        await s.flush()
    except IntegrityError:
        raise Conflict(f"credential {cid!r} exists already") from None
