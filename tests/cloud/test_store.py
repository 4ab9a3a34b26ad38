"""The store on SQLite and (when reachable) PostgreSQL: migrations, dedupe, live state, readings,
forward-only command status."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from structlog.testing import capture_logs

import cloud.store
from cloud import CloudSettings
from cloud.command_store import apply_result, expire_due, mark_gateway_seen
from cloud.store import apply_status, ingest_batch, mark_silent_gateways
from cloud.tables import CommandAudit, CommandRow, Device, EventRow, Gateway, Reading
from protocol import CommandResult, CommandStatus, GatewayStatus
from protocol.models import DeviceInfo
from tests.cloud.support import DEVICES, GATEWAY, SITE, make_batch, make_event


async def test_batch_twice_stores_once_and_updates_state(sessions: async_sessionmaker[AsyncSession]) -> None:
    t0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
    events = [
        make_event("gate-1", "gate.opening", 1, ts=t0),
        make_event("gate-1", "gate.opened", 2, ts=t0 + timedelta(seconds=3)),
        make_event("meter-1", "meter.reading", 3, {"energy_kwh": 100.0, "power_w": 900}, ts=t0),
        make_event("fire-1", "fire.alarm", 4, {"zone": "Z3"}, ts=t0),
    ]
    batch = make_batch(events)
    async with sessions() as s, s.begin():
        first = await ingest_batch(s, batch, datetime.now(UTC))
    async with sessions() as s, s.begin():
        again = await ingest_batch(s, batch, datetime.now(UTC))
    assert (first.stored, first.duplicates) == (4, 0)
    assert (again.stored, again.duplicates, again.new_events) == (0, 4, [])
    # An older event arriving late does not roll the gate back.
    late = make_batch([make_event("gate-1", "gate.closed", 0, ts=t0 - timedelta(minutes=5))])
    async with sessions() as s, s.begin():
        await ingest_batch(s, late, datetime.now(UTC))
    async with sessions() as s:
        assert await s.scalar(select(func.count()).select_from(EventRow)) == 5
        gate = await s.get(Device, "gate-1")
        fire = await s.get(Device, "fire-1")
        meter = await s.get(Device, "meter-1")
        points = (await s.execute(select(Reading.point, Reading.value).order_by(Reading.point))).all()
        stored = await s.get(EventRow, events[0].id)
    assert gate is not None
    assert gate.state["gate"]["value"] == "open"
    assert fire is not None
    assert fire.state["zone.Z3"]["value"] == "alarm"
    assert meter is not None
    assert meter.state["reading"]["value"] == {"energy_kwh": 100.0, "power_w": 900}
    assert points == [("energy_kwh", 100.0), ("power_w", 900.0)]
    assert stored is not None
    assert (stored.ts, stored.severity) == (t0, "access")


async def test_command_status_only_moves_forward(sessions: async_sessionmaker[AsyncSession]) -> None:
    now = datetime.now(UTC)
    async with sessions() as s, s.begin():
        await apply_status(
            s, GatewayStatus(site_id=SITE, gateway_id=GATEWAY, online=True, at=now, devices=DEVICES), now
        )
        for cid, expires in (("c-ok", now + timedelta(seconds=30)), ("c-old", now - timedelta(seconds=1))):
            s.add(
                CommandRow(
                    id=cid, device_id="gate-1", gateway_id=GATEWAY, site_id=SITE, action="open", args={},
                    status="sent", issued_by="t", issued_at=now, expires_at=expires, updated_at=now,
                )
            )  # fmt: skip

    def result(status: CommandStatus) -> CommandResult:
        return CommandResult(command_id="c-ok", gateway_id=GATEWAY, device_id="gate-1", status=status, at=now)

    async with sessions() as s, s.begin():
        assert await s.run_sync(apply_result, result(CommandStatus.SUCCEEDED), now) is not None
    async with sessions() as s, s.begin():
        assert await s.run_sync(apply_result, result(CommandStatus.ACCEPTED), now) is None
        assert await s.run_sync(apply_result, result(CommandStatus.FAILED), now) is None
    async with sessions() as s, s.begin():
        expired = await s.run_sync(expire_due, now)
    assert [c.id for c in expired] == ["c-old"]
    async with sessions() as s:
        assert (await s.get(CommandRow, "c-ok")).status == "succeeded"  # type: ignore[union-attr]
        assert (await s.get(CommandRow, "c-old")).status == "expired"  # type: ignore[union-attr]


async def test_result_from_another_gateway_changes_nothing_and_ignored_results_are_audited(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    now = datetime.now(UTC)
    async with sessions() as s, s.begin():
        await apply_status(
            s, GatewayStatus(site_id=SITE, gateway_id=GATEWAY, online=True, at=now, devices=DEVICES), now
        )
        s.add(
            CommandRow(
                id="c-1", device_id="gate-1", gateway_id=GATEWAY, site_id=SITE, action="open", args={},
                status="sent", issued_by="ops", issued_at=now, expires_at=now + timedelta(seconds=30),
                updated_at=now,
            )
        )  # fmt: skip

    def result(status: CommandStatus, gateway: str = GATEWAY) -> CommandResult:
        return CommandResult(
            command_id="c-1", gateway_id=gateway, device_id="gate-1", status=status, at=now,
            reason="jammed" if status is CommandStatus.FAILED else None, state={"state": "fault"},
        )  # fmt: skip

    async with sessions() as s, s.begin():
        assert await s.run_sync(apply_result, result(CommandStatus.FAILED, gateway="gw-other"), now) is None
        changed = await s.run_sync(apply_result, result(CommandStatus.FAILED), now)
        assert changed is not None and changed.status == "failed" and changed.result_reason == "jammed"
        assert changed.result_state == {"state": "fault"} and changed.issued_by == "ops"
        assert await s.run_sync(apply_result, result(CommandStatus.SUCCEEDED), now) is None
    async with sessions() as s:
        row = await s.get(CommandRow, "c-1")
        trail = (
            await s.execute(select(CommandAudit.status, CommandAudit.reason).order_by(CommandAudit.id))
        ).all()
    assert row is not None and row.status == "failed" and row.result_state == {"state": "fault"}
    # Nothing for the other gateway's claim; the late success is kept, marked as ignored.
    assert [tuple(t) for t in trail] == [
        ("failed", "jammed"),
        ("succeeded", "(ignored: command already failed)"),
    ]


async def test_mark_gateway_seen_writes_only_when_due(sessions: async_sessionmaker[AsyncSession]) -> None:
    then = datetime.now(UTC) - timedelta(minutes=10)
    async with sessions() as s, s.begin():
        await apply_status(
            s, GatewayStatus(site_id=SITE, gateway_id=GATEWAY, online=True, at=then, devices=DEVICES), then
        )
    every = timedelta(seconds=5)
    now = datetime.now(UTC)
    async with sessions() as s, s.begin():
        await s.run_sync(mark_silent_gateways, now, after_s=180)
    async with sessions() as s, s.begin():
        await s.run_sync(mark_gateway_seen, GATEWAY, now, every)  # offline: marked online at once
    async with sessions() as s:
        gw = await s.get(Gateway, GATEWAY)
        assert gw is not None and gw.online is True
        seen = gw.last_seen
    async with sessions() as s, s.begin():
        await s.run_sync(
            mark_gateway_seen, GATEWAY, now + timedelta(seconds=1), every
        )  # online, fresh: no write
    async with sessions() as s:
        assert (await s.get(Gateway, GATEWAY)).last_seen == seen  # type: ignore[union-attr]
    async with sessions() as s, s.begin():
        await s.run_sync(mark_gateway_seen, GATEWAY, now + timedelta(seconds=6), every)  # stale: bumped
    async with sessions() as s:
        assert (await s.get(Gateway, GATEWAY)).last_seen > seen  # type: ignore[union-attr,operator]


async def test_silent_gateway_goes_offline_and_devices_unknown(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    then = datetime.now(UTC) - timedelta(minutes=10)
    async with sessions() as s, s.begin():
        await apply_status(
            s, GatewayStatus(site_id=SITE, gateway_id=GATEWAY, online=True, at=then, devices=DEVICES), then
        )
    async with sessions() as s, s.begin():
        assert await s.run_sync(mark_silent_gateways, datetime.now(UTC), after_s=180) == [GATEWAY]
    async with sessions() as s:
        gw = await s.get(Gateway, GATEWAY)
        devices = (await s.execute(select(Device.online))).scalars().all()
        gate = await s.get(Device, "gate-1")
    assert gw is not None
    assert gw.online is False
    assert set(devices) == {None}
    assert gate is not None and gate.name == DEVICES[0].name  # what the status named it


async def test_another_sites_gateway_cannot_move_or_write_a_device_it_names(
    sessions: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Device ids are unique across sites: an estate whose config reuses another's id (every estate has
    a "fire-panel") must not move that device to itself, nor write its state or readings; its own
    events are still stored, under its site, and the clash is logged once."""
    now = datetime.now(UTC)
    t0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
    other_site, other_gw = "elm-court", "gw-9"
    monkeypatch.setattr(cloud.store, "_CLAIMS_LOGGED", set())  # logged once per process: a fresh one
    async with sessions() as s, s.begin():
        await apply_status(
            s, GatewayStatus(site_id=SITE, gateway_id=GATEWAY, online=True, at=now, devices=DEVICES), now
        )
        await ingest_batch(
            s, make_batch([make_event("meter-1", "meter.reading", 1, {"kwh": 100.0}, ts=t0)]), now
        )
    theirs = [
        DeviceInfo(id="meter-1", kind="smart_meter", model="x"),
        DeviceInfo(id="meter-9", kind="smart_meter", model="x"),
    ]
    with capture_logs() as logs:
        async with sessions() as s, s.begin():
            await apply_status(
                s,
                GatewayStatus(site_id=other_site, gateway_id=other_gw, online=True, at=now, devices=theirs),
                now,
            )
        async with sessions() as s:
            claimant = await s.get(Gateway, other_gw)
        assert claimant is not None and claimant.device_ids_taken == ["meter-1"]  # GET /gateways shows it
        batch = make_batch(
            [
                make_event("meter-1", "meter.reading", 1, {"kwh": 999.0}, ts=t0 + timedelta(minutes=1)),
                make_event("meter-9", "meter.reading", 2, {"kwh": 5.0}, ts=t0 + timedelta(minutes=1)),
            ],
            site=other_site,
            gateway=other_gw,
        )
        async with sessions() as s, s.begin():
            result = await ingest_batch(s, batch, now)
        async with sessions() as s, s.begin():
            await apply_status(
                s, GatewayStatus(site_id=other_site, gateway_id=other_gw, online=False, at=now), now
            )
    assert result.stored == 2
    async with sessions() as s:
        meter = await s.get(Device, "meter-1")
        theirs_meter = await s.get(Device, "meter-9")
        values = (
            (await s.execute(select(Reading.value).where(Reading.device_id == "meter-1"))).scalars().all()
        )
        kept = await s.scalar(
            select(func.count()).select_from(EventRow).where(EventRow.site_id == other_site)
        )
    assert meter is not None and theirs_meter is not None
    assert (meter.site_id, meter.gateway_id, meter.model, meter.online) == (SITE, GATEWAY, "generic", True)
    assert meter.state["reading"]["value"] == {"kwh": 100.0}
    assert values == [100.0]
    assert (theirs_meter.site_id, theirs_meter.state["reading"]["value"]) == (other_site, {"kwh": 5.0})
    assert kept == 2
    clashes = [entry for entry in logs if entry["event"] == "registry.device_id_taken"]
    assert [(c["device"], c["owner_site"], c["site"]) for c in clashes] == [("meter-1", SITE, other_site)]
    assert cloud.store.device_id_clashes() == 1  # the /metrics gauge


async def test_group_commit_touches_each_gateway_once_with_its_latest_batch(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """Ingest commits queued batches together and upserts each gateway once, before any of them (their
    devices reference it), with the clock skew of its latest batch."""
    from cloud.hub import Hub
    from cloud.ingest import Ingest, _Parsed
    from cloud.metrics import Metrics
    from protocol.topics import Topics

    now = datetime.now(UTC)
    batches = [
        make_batch([make_event("meter-1", "meter.reading", 1)], sent_at=now - timedelta(seconds=600)),
        make_batch([make_event("gate-9", "gate.opened", 1)], gateway="gw-9", sent_at=now),
        make_batch([make_event("meter-1", "meter.reading", 2)], sent_at=now - timedelta(seconds=1)),
    ]
    ingest = Ingest(CloudSettings(), sessions, None, Hub(), Metrics())  # type: ignore[arg-type]
    group = [_Parsed(Topics("steward", b.site_id, b.gateway_id), b, 0.0) for b in batches]
    outcomes = await ingest._commit(group)
    assert [o.stored for o in outcomes] == [1, 1, 1]
    async with sessions() as s:
        gateways = {g.id: g for g in (await s.execute(select(Gateway))).scalars()}
        devices = {d.id: d.gateway_id for d in (await s.execute(select(Device))).scalars()}
    assert gateways[GATEWAY].clock_skew_s > -120 and not gateways[GATEWAY].clock_skewed  # the latest batch
    assert "gw-9" in gateways and devices["gate-9"] == "gw-9"


def test_ids_are_checked_natively_with_the_topic_segment_rule() -> None:
    """protocol.models checks ids in Rust; the rule must stay the topic layer's (check_segment)."""
    from pydantic import ValidationError

    from protocol.models import SEGMENT_PATTERN
    from protocol.topics import _SEGMENT, check_segment

    assert _SEGMENT.pattern == SEGMENT_PATTERN
    for bad in ["a/b", "+", "#", "", "x" * 65, "sp ace", "gw\n"]:
        with pytest.raises(ValidationError, match="id must be 1-64 characters"):
            make_batch([make_event("meter-1", "meter.reading", 1)], gateway=bad)
    for good in ["gw-1", "A.b_c-9", "x" * 64]:
        assert make_batch([make_event(good, "meter.reading", 1)], gateway=good).gateway_id == check_segment(
            good, "id"
        )
