"""Operator commands: validate against the device kind's action table, store, publish to the device's
gateway, track the result; a sweeper expires what did not finish in time.

Status only moves forward: pending -> sent -> accepted -> succeeded | failed | rejected | expired.
Every transition appends a row to ``command_audit``. Reads (``get``, ``wait``, the audit trail) use
read-only sessions, which on SQLite never queue behind writers. Every command is signed (Ed25519, the key in
``command_signing_key_file``) just before it is published; ``issued_by`` is the authenticated caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import structlog
from sqlalchemy import Connection, func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from cloud import command_store, db, store
from cloud.auth.keys import load_command_signing_key
from cloud.db import make_read_sessions
from cloud.errors import ActionNotAllowed, BrokerUnavailable, NotFound
from cloud.hub import Hub
from cloud.metrics import Metrics
from cloud.schemas import CommandRequest, command_json
from cloud.settings import CloudSettings
from cloud.tables import CommandAudit, CommandRow, Gateway
from protocol import actions
from protocol.ids import new_id
from protocol.models import Command, CommandStatus, utcnow
from protocol.signing import sign_command
from protocol.topics import Topics
from steward.mqtt import MqttClient, MqttError

log = structlog.get_logger("steward.cloud.commands")


class CommandService:
    def __init__(
        self,
        settings: CloudSettings,
        sessions: async_sessionmaker[AsyncSession],
        mqtt: MqttClient,
        hub: Hub,
        metrics: Metrics,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.read_sessions = make_read_sessions(sessions)
        self.mqtt = mqtt
        self.hub = hub
        self.metrics = metrics
        self.signing_key = load_command_signing_key(settings)  # created on first start if missing

    async def issue(
        self,
        device_id: str,
        request: CommandRequest,
        *,
        issued_by: str,
        authorize: Callable[[str], None] | None = None,
    ) -> CommandRow:
        """Store, sign and publish a command. ``issued_by``: the authenticated user. ``authorize(site_id)``
        raises if the caller may not command at the device's site (checked before anything is stored).

        One write transaction: the device lookup, the insert, and the ``pending`` and ``sent`` audit rows
        commit together *before* the publish. A second transaction for ``sent`` after the PUBACK used to
        collide on SQLite's write lock with ingest storing the gateway's result for the same command.
        "sent" therefore means "stored and being handed to the broker"; if the client could not hand it
        over (not connected), the command moves on to ``failed`` (503). If it left but the broker did
        not confirm it (no PUBACK within ``command_publish_timeout_s``, or the link dropped with it in
        flight), the answer is 503 too, but the command stays ``sent``: it may still reach the gateway.

        A command for a gateway that is offline (its Last Will, or silent past
        ``gateway_offline_after_s``) is stored ``expired`` at once, with the reason, and not sent: the
        gateway's session is clean, so the broker would drop it, and the operator would only learn so
        at its expiry."""
        cmd = await db.write(
            self.sessions,
            _store_new,
            device_id,
            request,
            issued_by=issued_by,
            authorize=authorize,
            expires_in_s=request.expires_in_s or self.settings.command_expiry_s,
            now=utcnow(),
        )
        bound = log.bind(command=cmd.id, device=cmd.device_id, gateway=cmd.gateway_id, action=cmd.action)
        if cmd.status == CommandStatus.EXPIRED.value:
            self.metrics.command_changed(cmd)
            self.hub.publish("command", command_json(cmd), row=cmd)
            bound.warning("command.not_sent", issued_by=cmd.issued_by, reason=cmd.result_reason)
            return cmd
        unsigned = Command(
            id=cmd.id,
            site_id=cmd.site_id,
            gateway_id=cmd.gateway_id,
            device_id=cmd.device_id,
            action=cmd.action,
            args=cmd.args,
            issued_at=cmd.issued_at,
            expires_at=cmd.expires_at,
            issued_by=cmd.issued_by,
        )
        wire = sign_command(unsigned, self.signing_key)
        topic = Topics(self.settings.topic_prefix, cmd.site_id, cmd.gateway_id).commands
        timeout = self.settings.command_publish_timeout_s
        try:
            await self.mqtt.publish(topic, wire.to_bytes(), qos=1, retain=False, timeout=timeout)
        except MqttError as exc:
            if getattr(exc, "may_have_sent", False):
                # It left, unconfirmed: the broker may have it and the gate may still move. Failing it
                # would tell the operator otherwise (and ignore the gateway's result); it stays sent,
                # and its result or, at its expiry, the sweeper ends it.
                bound.warning("command.publish_unconfirmed", error=str(exc))
                self.metrics.command_changed(cmd)
                self.hub.publish("command", command_json(cmd), row=cmd)
                raise BrokerUnavailable(
                    f"command {cmd.id} not confirmed by the MQTT broker ({exc}); it may still run: "
                    f"follow GET /api/v1/commands/{cmd.id}"
                ) from None
            bound.warning("command.publish_failed", error=str(exc))
            why = f"not sent: the MQTT broker is unavailable ({exc})"
            await self._advance(cmd.id, CommandStatus.FAILED, why)
            raise BrokerUnavailable(f"command {cmd.id} {why}") from None
        self.metrics.command_changed(cmd)
        self.hub.publish("command", command_json(cmd), row=cmd)
        bound.info("command.sent", issued_by=cmd.issued_by, expires_at=cmd.expires_at.isoformat())
        return cmd

    async def _advance(self, command_id: str, status: CommandStatus, reason: str | None) -> CommandRow | None:
        row = await db.write(self.sessions, command_store.advance, command_id, status, reason, utcnow())
        if row is not None:
            self.metrics.command_changed(row)
            self.hub.publish("command", command_json(row), row=row)
        return row

    async def get(self, command_id: str) -> CommandRow:
        row = await db.read(self.sessions, command_store.get, command_id)
        if row is None:
            raise NotFound(f"no command {command_id!r}")
        return row

    async def wait(
        self,
        command_id: str,
        wait_s: float,
        seen: str | None = None,
        *,
        authorize: Callable[[CommandRow], None] | None = None,
        until_final: bool = False,
        row: CommandRow | None = None,
    ) -> CommandRow:
        """The command as soon as its status is final or differs from ``seen`` (default: its status
        now), or as it is after ``wait_s`` seconds. ``until_final``: only a final status ends the wait.
        ``authorize(row)`` runs on the first read and may raise (then nothing is waited for). ``row``:
        the command as the caller has it (issue() just stored it), instead of a first read."""
        deadline = time.monotonic() + wait_s
        # Watch before the first read: a result ingested between a read and the wait would otherwise
        # be noticed only at the next periodic re-read.
        with self.hub.watch(command_id) as watch:
            if row is None:
                row = await self.get(command_id)
            latest = self.hub.latest_command(command_id)  # a change published before the watch began
            if latest is not None and _ahead(latest, row):
                row = latest
            if authorize is not None:
                authorize(row)
            seen = seen or row.status
            while not CommandStatus(row.status).final and (until_final or row.status == seen):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                # Another cloud instance may have ingested the result: re-read at least every 0.5 s.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(remaining, 0.5)):
                        await watch.changed.wait()
                watch.changed.clear()  # before the read, so a change published during it sets it again
                # A change committed here comes with its row: no read back from the store (on the
                # command round trip, twice per command). Status only moves forward, so the newer wins.
                published, watch.row = watch.row, None
                if published is not None and _ahead(published, row):
                    row = published
                else:
                    row = await self.get(command_id)
        return row

    async def audit_trail(self, command_id: str) -> list[CommandAudit]:
        async with self.read_sessions() as session:
            rows = await session.execute(
                select(CommandAudit).where(CommandAudit.command_id == command_id).order_by(CommandAudit.id)
            )
            return list(rows.scalars())

    async def sweep_once(self) -> None:
        offline_after = self.settings.gateway_offline_after_s
        expired, silent = await db.write(self.sessions, _sweep, utcnow(), offline_after)
        for row in expired:
            self.metrics.command_changed(row)
            log.info("command.expired", command=row.id, device=row.device_id, gateway=row.gateway_id)
            self.hub.publish("command", command_json(row), row=row)
        for gateway_id in silent:
            log.warning("gateway.silent_marked_offline", gateway=gateway_id)
            self.hub.publish("gateway", {"id": gateway_id, "online": False})

    async def run_sweeper(self) -> None:
        """Expire overdue commands and mark silent gateways offline, every ``sweep_interval_s``."""
        while True:
            try:
                await self.sweep_once()
            except SQLAlchemyError as exc:
                log.error("sweeper.store_failed", error=str(exc)[:500])
            await asyncio.sleep(self.settings.sweep_interval_s)

    async def gateway_counts(self) -> tuple[int, int]:
        async with self.read_sessions() as session:
            online = await session.scalar(
                select(func.count()).select_from(Gateway).where(Gateway.online.is_(True))
            )
            skewed = await session.scalar(
                select(func.count()).select_from(Gateway).where(Gateway.clock_skewed.is_(True))
            )
        return int(online or 0), int(skewed or 0)


def _store_new(
    conn: Connection,
    device_id: str,
    request: CommandRequest,
    *,
    issued_by: str,
    authorize: Callable[[str], None] | None,
    expires_in_s: float,
    now: datetime,
) -> CommandRow:
    """:meth:`CommandService.issue`'s transaction: the device lookup, the permission check, and the
    command stored as ``sent``, with its ``pending`` and ``sent`` audit rows."""
    device = command_store.device(conn, device_id)
    if device is None:
        raise NotFound(f"no device {device_id!r}")
    if authorize is not None:
        authorize(device.site_id)
    try:
        args = actions.validate_action(device.kind, request.action, request.args)
    except actions.ActionNotAllowed as exc:
        raise ActionNotAllowed(str(exc)) from None
    status, not_sent = CommandStatus.SENT, None
    if device.gateway_online is False:
        status = CommandStatus.EXPIRED
        seen = device.gateway_last_seen
        since = f", last heard from {_aware(seen).isoformat(timespec='seconds')}" if seen else ""
        not_sent = f"gateway {device.gateway_id} is offline{since}: not sent"
    cmd = CommandRow(
        id=new_id(),
        device_id=device.id,
        gateway_id=device.gateway_id,
        site_id=device.site_id,
        action=request.action,
        args=args,
        status=status.value,
        reason=request.reason or None,
        result_reason=not_sent,
        result_state=None,
        issued_by=issued_by,
        issued_at=now,
        expires_at=now + timedelta(seconds=expires_in_s),
        updated_at=now,
    )
    command_store.insert(conn, cmd, request.reason or None)
    return cmd


def _aware(at: datetime) -> datetime:
    # SQLite hands back naive datetimes (stored as UTC); PostgreSQL aware ones.
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def _ahead(a: CommandRow, b: CommandRow) -> bool:
    return command_store.rank(CommandStatus(a.status)) > command_store.rank(CommandStatus(b.status))


def _sweep(conn: Connection, now: datetime, offline_after_s: float) -> tuple[list[CommandRow], list[str]]:
    return command_store.expire_due(conn, now), store.mark_silent_gateways(conn, now, offline_after_s)
