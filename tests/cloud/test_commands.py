"""Command lifecycle over HTTP, the broker and a fake gateway that answers on the wire, on SQLite and on
PostgreSQL (where it runs); and the command service underneath on a real SQLite file (read sessions,
the write lock, long-poll wakeups)."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

import cloud.db
from cloud import CloudSettings
from cloud.command_store import apply_result
from cloud.commands import CommandService
from cloud.db import ReadOnlySessionError, make_engine, make_sessions, upgrade
from cloud.hub import Hub
from cloud.metrics import Metrics
from cloud.schemas import command_json
from cloud.tables import CommandRow, Gateway, Site
from protocol import CommandResult, CommandStatus, new_id
from steward.mqtt import MqttClient
from tests.cloud.support import (
    GATEWAY,
    SITE,
    FakeGateway,
    RunningCloud,
    cloud_settings,
    eventually,
    free_port,
    running_cloud,
)
from tests.stack import CloudDb, LinkProxy


@asynccontextmanager
async def cloud_with_gateway(
    broker_port: int, db: str | CloudDb
) -> AsyncIterator[tuple[RunningCloud, FakeGateway]]:
    url, extra = (db, {}) if isinstance(db, str) else db
    async with (
        running_cloud(cloud_settings(broker_port, url, **extra)) as cloud,
        FakeGateway(broker_port) as gw,
    ):
        await gw.send_status(online=True)

        async def registered() -> bool:
            return (await cloud.http.get("/api/v1/devices/gate-1")).status_code == 200

        await eventually(registered)
        yield cloud, gw


async def test_open_gate_accepted_then_succeeded(broker_port: int, cloud_db: CloudDb) -> None:
    async with cloud_with_gateway(broker_port, cloud_db) as (cloud, gw):
        # The body cannot name who issued it: an unknown field, refused like any other.
        resp = await cloud.http.post(
            "/api/v1/devices/gate-1/commands",
            json={"action": "open", "reason": "visitor at gate", "issued_by": "agent-7"},
        )
        assert (resp.status_code, resp.json()["error"]["code"]) == (422, "invalid_request"), resp.text
        assert "issued_by" in resp.json()["error"]["message"]
        resp = await cloud.http.post(
            "/api/v1/devices/gate-1/commands", json={"action": "open", "reason": "visitor at gate"}
        )
        assert resp.status_code == 202, resp.text
        cmd = resp.json()
        assert (cmd["status"], cmd["action"], cmd["gateway_id"]) == ("sent", "open", "gw-1")
        assert cmd["issued_by"] == "admin"  # the authenticated user
        wire = await gw.next_command()
        assert (wire.id, wire.device_id, wire.action, wire.issued_by) == (
            cmd["id"],
            "gate-1",
            "open",
            "admin",
        )
        assert wire.signature  # signed by the cloud
        await gw.answer(wire, CommandStatus.ACCEPTED)
        accepted = (
            await cloud.http.get(f"/api/v1/commands/{cmd['id']}", params={"wait": 5, "seen": "sent"})
        ).json()
        assert accepted["status"] == "accepted"
        await gw.answer(wire, CommandStatus.SUCCEEDED, gate="open")
        done = (
            await cloud.http.get(f"/api/v1/commands/{cmd['id']}", params={"wait": 5, "seen": "accepted"})
        ).json()
        assert (done["status"], done["final"], done["result_state"]) == ("succeeded", True, {"gate": "open"})
        # A late duplicate never moves a final command backwards.
        await gw.answer(wire, CommandStatus.ACCEPTED)
        audit = await eventually(
            lambda: _audit_len(cloud, cmd["id"], 5),
        )
        assert [a["status"] for a in audit] == ["pending", "sent", "accepted", "succeeded", "accepted"]
        assert (audit[0]["reason"], audit[0]["operator"]) == ("visitor at gate", "admin")
        assert "ignored" in audit[-1]["reason"]
        final = (await cloud.http.get(f"/api/v1/commands/{cmd['id']}")).json()
        assert final["status"] == "succeeded"
        # How long the operator waited, issued to final: in /metrics, by action and outcome.
        took = (
            datetime.fromisoformat(final["updated_at"]) - datetime.fromisoformat(final["issued_at"])
        ).total_seconds()
        series = 'steward_cloud_command_duration_seconds_{}{{action="open",outcome="succeeded"}}'
        samples = dict(line.rsplit(" ", 1) for line in (await cloud.http.get("/metrics")).text.splitlines())
        assert samples[series.format("count")] == "1"
        assert float(samples[series.format("sum")]) == pytest.approx(took, abs=1e-3)
        assert samples[series.format("bucket").replace("}", ',le="60.0"}')] == "1"


async def test_post_with_wait_answers_when_the_command_finished(broker_port: int, cloud_db: CloudDb) -> None:
    """One request for "open the gate and tell me": the POST answers with the final command. A gateway
    that finished before announcing sends one result with ``accepted_at``; the trail has both steps."""
    async with cloud_with_gateway(broker_port, cloud_db) as (cloud, gw):
        posting = asyncio.create_task(
            cloud.http.post("/api/v1/devices/gate-1/commands", json={"action": "open"}, params={"wait": 5})
        )
        wire = await gw.next_command()
        await asyncio.sleep(0.1)
        assert not posting.done()  # still waiting: nothing final yet
        accepted_at = datetime.now(UTC)
        await gw.answer(wire, CommandStatus.SUCCEEDED, accepted_at=accepted_at, gate="open")
        resp = await asyncio.wait_for(posting, 5)
        assert resp.status_code == 202, resp.text
        done = resp.json()
        assert (done["id"], done["status"], done["final"]) == (wire.id, "succeeded", True)
        assert done["result_state"] == {"gate": "open"}
        audit = (await cloud.http.get(f"/api/v1/commands/{wire.id}/audit")).json()
        assert [a["status"] for a in audit] == ["pending", "sent", "accepted", "succeeded"]
        assert datetime.fromisoformat(audit[2]["at"]) == accepted_at

        # Not finished within the wait: the command as it is then, not final, and no error.
        started = time.monotonic()
        resp = await cloud.http.post(
            "/api/v1/devices/gate-1/commands", json={"action": "close"}, params={"wait": 0.3}
        )
        assert 0.25 < time.monotonic() - started < 2
        assert (resp.status_code, resp.json()["status"], resp.json()["final"]) == (202, "sent", False)


async def _audit_len(cloud: RunningCloud, command_id: str, n: int) -> list[dict[str, object]] | None:
    rows = (await cloud.http.get(f"/api/v1/commands/{command_id}/audit")).json()
    return rows if len(rows) >= n else None


async def test_a_result_does_not_wait_behind_a_backlog_of_event_batches(
    broker_port: int, sqlite_url: str
) -> None:
    """After an outage a gateway drains thousands of events while operators open gates: the command's
    result takes its own lane in ingest instead of queueing behind the batches received before it."""
    from tests.cloud.support import make_batch, make_event

    async with cloud_with_gateway(broker_port, sqlite_url) as (cloud, gw):
        cmd = (await cloud.http.post("/api/v1/devices/gate-1/commands", json={"action": "open"})).json()
        wire = await gw.next_command()
        batches, per_batch = 30, 500
        backlog = [
            make_batch(
                [
                    make_event("meter-1", "meter.reading", b * per_batch + i + 1, {"energy_kwh": float(i)})
                    for i in range(per_batch)
                ]
            )
            for b in range(batches)
        ]
        # Another process holds the database's write lock while the backlog and then the result arrive,
        # so all of them are waiting in the cloud when it is released, as after an outage. (Sent while the
        # cloud could commit, a fast machine had stored most of the backlog before the result was sent.)
        db = sqlite_url.removeprefix("sqlite+aiosqlite:///")
        with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as blocker:
            blocker.execute("BEGIN IMMEDIATE")
            for batch in backlog:
                await gw.send_batch(batch)
            await gw.answer(wire, CommandStatus.SUCCEEDED, gate="open")
            await asyncio.sleep(0.5)  # the result reaches its lane and waits for the lock too
            blocker.execute("ROLLBACK")
        done = (await cloud.http.get(f"/api/v1/commands/{cmd['id']}", params={"wait": 10})).json()
        assert done["status"] == "succeeded"
        for _ in range(batches):
            await gw.next_ack(timeout=30)  # and the backlog is still stored, all of it
        assert await stored_events(cloud) == batches * per_batch
    # By the cloud's own clock: the result was applied before the backlog received ahead of it was all
    # stored.
    with contextlib.closing(sqlite3.connect(db)) as conn:
        (last_stored,) = conn.execute("SELECT max(stored_at) FROM events").fetchone()
    applied = datetime.fromisoformat(done["updated_at"])
    assert applied < datetime.fromisoformat(last_stored).replace(tzinfo=UTC), (
        "the result waited for the whole backlog"
    )


async def stored_events(cloud: RunningCloud) -> int:
    metrics = (await cloud.http.get("/metrics")).text
    line = next(x for x in metrics.splitlines() if x.startswith("steward_cloud_events_stored_total "))
    return int(float(line.split()[1]))


async def test_failed_action_carries_the_reason(broker_port: int, cloud_db: CloudDb) -> None:
    async with cloud_with_gateway(broker_port, cloud_db) as (cloud, gw):
        cmd = (
            await cloud.http.post(
                "/api/v1/devices/door-1/commands", json={"action": "unlock", "args": {"duration_s": 3}}
            )
        ).json()
        assert cmd["args"] == {"duration_s": 3.0}
        wire = await gw.next_command()
        await gw.answer(wire, CommandStatus.FAILED, reason="lock did not release", lock="locked")
        done = (await cloud.http.get(f"/api/v1/commands/{cmd['id']}", params={"wait": 5})).json()
        assert (done["status"], done["result_reason"]) == ("failed", "lock did not release")


async def test_unknown_action_bad_args_and_unknown_device(broker_port: int, cloud_db: CloudDb) -> None:
    async with cloud_with_gateway(broker_port, cloud_db) as (cloud, gw):
        resp = await cloud.http.post("/api/v1/devices/gate-1/commands", json={"action": "launch"})
        assert resp.status_code == 422
        err = resp.json()["error"]
        assert err["code"] == "action_not_allowed"
        assert "allowed: close, hold_open, open, release, stop" in err["message"]
        resp = await cloud.http.post(
            "/api/v1/devices/door-1/commands", json={"action": "unlock", "args": {"duration_s": 9999}}
        )
        assert resp.status_code == 422
        assert "duration_s" in resp.json()["error"]["message"]
        resp = await cloud.http.post("/api/v1/devices/meter-1/commands", json={"action": "open"})
        assert "this device only reports" in resp.json()["error"]["message"]
        resp = await cloud.http.post("/api/v1/devices/nope/commands", json={"action": "open"})
        assert resp.status_code == 404
        assert resp.json()["error"]["code"] == "not_found"
        resp = await cloud.http.post("/api/v1/devices/gate-1/commands", json={"actoin": "open"})
        assert (resp.status_code, resp.json()["error"]["code"]) == (422, "invalid_request")
        assert gw.commands.empty()  # nothing invalid reached the gateway


async def test_command_to_an_offline_gateway_expires_at_once_unsent(
    broker_port: int, cloud_db: CloudDb
) -> None:
    async with cloud_with_gateway(broker_port, cloud_db) as (cloud, gw):
        await gw.send_status(online=False, devices=[])  # the Last Will

        async def offline() -> bool:
            return (await cloud.http.get("/api/v1/devices/gate-1")).json()["online"] is None

        await eventually(offline)
        resp = await cloud.http.post("/api/v1/devices/gate-1/commands", json={"action": "open"})
        assert resp.status_code == 202
        cmd = resp.json()
        # Not queued, not waited out: the answer says so at once (its clean session would lose it).
        assert (cmd["status"], cmd["final"]) == ("expired", True), cmd
        assert cmd["result_reason"].startswith("gateway gw-1 is offline, last heard from 20")
        assert cmd["result_reason"].endswith(": not sent")
        with pytest.raises(TimeoutError):
            await gw.next_command(timeout=0.5)
        trail = (await cloud.http.get(f"/api/v1/commands/{cmd['id']}/audit")).json()
        assert [(a["status"], a["reason"]) for a in trail] == [
            ("pending", None),
            ("expired", cmd["result_reason"]),
        ]
        metrics = (await cloud.http.get("/metrics")).text
        assert 'steward_cloud_command_updates_total{status="expired"} 1' in metrics
        assert 'steward_cloud_command_duration_seconds_count{action="open",outcome="expired"} 1' in metrics

        # Back online: commands go out again.
        await gw.send_status(online=True)

        async def online() -> bool:
            return (await cloud.http.get("/api/v1/devices/gate-1")).json()["online"] is True

        await eventually(online)
        again = (await cloud.http.post("/api/v1/devices/gate-1/commands", json={"action": "open"})).json()
        assert again["status"] == "sent"
        assert (await gw.next_command()).id == again["id"]
        missing = await cloud.http.get("/api/v1/commands/NOPE")
        assert (missing.status_code, missing.json()["error"]["code"]) == (404, "not_found")


async def test_broker_gone_is_503_and_the_command_failed(sqlite_url: str) -> None:
    from amqtt.broker import Broker

    port = free_port()
    broker = Broker(
        {
            "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }
    )
    await broker.start()
    running = True
    try:
        async with running_cloud(cloud_settings(port, sqlite_url)) as cloud:
            async with FakeGateway(port) as gw:
                await gw.send_status(online=True)
                await eventually(lambda: _registered(cloud))
            await asyncio.wait_for(broker.shutdown(), 10)
            running = False
            # The command is stored as sent before the publish; the client, not connected, refuses it at
            # once and keeps nothing for later, so it is failed: it cannot reach the gateway.
            resp = await cloud.http.post("/api/v1/devices/gate-1/commands", json={"action": "open"})
            assert (resp.status_code, resp.json()["error"]["code"]) == (503, "broker_unavailable"), resp.text
            command_id = resp.json()["error"]["message"].split()[1]
            done = (await cloud.http.get(f"/api/v1/commands/{command_id}")).json()
            assert (done["status"], done["final"]) == ("failed", True)
            assert done["result_reason"].startswith("not sent: the MQTT broker is unavailable")
            trail = (await cloud.http.get(f"/api/v1/commands/{command_id}/audit")).json()
            assert [a["status"] for a in trail] == ["pending", "sent", "failed"]
    finally:
        if running:
            await asyncio.wait_for(broker.shutdown(), 10)


async def test_a_command_the_broker_does_not_confirm_stays_sent_and_can_still_succeed(
    broker_port: int, sqlite_url: str
) -> None:
    """503 when the PUBACK does not come in time, but not ``failed``: the message left, the broker may
    have it, and the gate may still move; the gateway's result decides."""
    link = LinkProxy(broker_port)  # the cloud's own link to the broker, which the test stalls
    await link.start()
    settings = cloud_settings(link.port, sqlite_url, command_publish_timeout_s=0.5)
    try:
        async with running_cloud(settings) as cloud, FakeGateway(broker_port) as gw:
            await gw.send_status(online=True)
            await eventually(lambda: _registered(cloud))
            link.hold()
            resp = await cloud.http.post("/api/v1/devices/gate-1/commands", json={"action": "open"})
            error = resp.json()["error"]
            assert (resp.status_code, error["code"]) == (503, "broker_unavailable"), resp.text
            assert "it may still run" in error["message"]
            command_id = error["message"].split()[1]
            assert (await cloud.http.get(f"/api/v1/commands/{command_id}")).json()["status"] == "sent"
            link.release()
            cmd = await gw.next_command()
            assert cmd.id == command_id
            await gw.answer(cmd, CommandStatus.SUCCEEDED, gate="open")
            done = (await cloud.http.get(f"/api/v1/commands/{command_id}", params={"wait": 5})).json()
            assert (done["status"], done["final"]) == ("succeeded", True)
    finally:
        await link.cut()


async def _registered(cloud: RunningCloud) -> bool:
    return (await cloud.http.get("/api/v1/devices/gate-1")).status_code == 200


# ---- the service underneath, on a real SQLite file: sessions, write lock, long-poll wakeups --------


@asynccontextmanager
async def command_service(tmp_path: Path) -> AsyncIterator[tuple[CommandService, Hub, str]]:
    """A CommandService on a migrated SQLite file with one ``sent`` command (no broker: nothing here
    publishes); yields it, its hub and the command id."""
    settings = CloudSettings(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'cloud.db'}",
        command_signing_key_file=tmp_path / "signing.pem",
        broker_accounts_file=tmp_path / "accounts.json",
    )
    engine = make_engine(settings)
    try:
        await upgrade(engine, settings)
        sessions = make_sessions(engine)
        now = datetime.now(UTC)
        command_id = new_id()
        async with sessions() as session, session.begin():
            session.add(Site(id=SITE, name=None, created_at=now, updated_at=now))
            session.add(Gateway(id=GATEWAY, site_id=SITE, online=True, status={}, health={}))
            session.add(
                CommandRow(
                    id=command_id,
                    device_id="gate-1",
                    gateway_id=GATEWAY,
                    site_id=SITE,
                    action="open",
                    args={},
                    status="sent",
                    issued_by="t",
                    issued_at=now,
                    expires_at=now + timedelta(seconds=30),
                    updated_at=now,
                )
            )
        hub = Hub()
        mqtt = MqttClient("127.0.0.1", 1, client_id="never-connected")
        yield CommandService(settings, sessions, mqtt, hub, Metrics()), hub, command_id
    finally:
        await engine.dispose()


async def _ingest_result(service: CommandService, command_id: str, status: CommandStatus) -> None:
    """What ingest does with a gateway's result: commit, then tell the hub."""
    result = CommandResult(
        command_id=command_id, gateway_id=GATEWAY, device_id="gate-1", status=status, at=datetime.now(UTC)
    )
    async with service.sessions() as session, session.begin():
        changed = await session.run_sync(apply_result, result, datetime.now(UTC))
    assert changed is not None
    service.hub.publish("command", command_json(changed))


async def test_long_poll_sees_a_result_stored_between_its_read_and_its_wait(tmp_path: Path) -> None:
    async with command_service(tmp_path) as (service, _hub, command_id):
        read = service.get

        async def read_then_result_arrives(cid: str) -> CommandRow:
            row = await read(cid)  # the row as it was: sent
            if row.status == "sent":
                # The result is committed and published after this read, before wait() sleeps.
                await _ingest_result(service, cid, CommandStatus.SUCCEEDED)
            return row

        service.get = read_then_result_arrives  # type: ignore[method-assign]
        started = time.monotonic()
        row = await service.wait(command_id, 5)
        elapsed = time.monotonic() - started
        assert row.status == "succeeded"
        # Woken by the hub at once, not by the 0.5 s re-read that covers other instances.
        assert elapsed < 0.3, f"took {elapsed:.3f} s: the wakeup was lost"


async def test_long_poll_returns_on_each_change_and_times_out(tmp_path: Path) -> None:
    async with command_service(tmp_path) as (service, _hub, command_id):
        waiting = asyncio.create_task(service.wait(command_id, 5))
        await asyncio.sleep(0.05)
        await _ingest_result(service, command_id, CommandStatus.ACCEPTED)
        assert (await asyncio.wait_for(waiting, 1)).status == "accepted"
        started = time.monotonic()
        row = await service.wait(command_id, 0.3, seen="accepted")
        assert row.status == "accepted"
        assert 0.25 < time.monotonic() - started < 1.0


async def test_long_poll_takes_the_row_published_with_a_change_and_reads_the_store_otherwise(
    tmp_path: Path,
) -> None:
    async with command_service(tmp_path) as (service, hub, command_id):
        reads: list[str] = []
        read = service.get

        async def counted(cid: str) -> CommandRow:
            reads.append(cid)
            return await read(cid)

        service.get = counted  # type: ignore[method-assign]
        waiting = asyncio.create_task(service.wait(command_id, 5))
        await asyncio.sleep(0.05)
        result = CommandResult(
            command_id=command_id, gateway_id=GATEWAY, device_id="gate-1", status=CommandStatus.ACCEPTED,
            at=datetime.now(UTC),
        )  # fmt: skip
        async with service.sessions() as session, session.begin():
            changed = await session.run_sync(apply_result, result, datetime.now(UTC))
        assert changed is not None
        hub.publish("command", command_json(changed), row=changed)
        assert (await asyncio.wait_for(waiting, 1)).status == "accepted"
        assert len(reads) == 1  # the first read only: the change came with its row

        # A published row not ahead of what the waiter has (an older status) is not taken: it reads.
        reads.clear()
        waiting = asyncio.create_task(service.wait(command_id, 0.3, seen="accepted"))
        await asyncio.sleep(0.05)
        changed.status = "sent"
        hub.publish("command", command_json(changed), row=changed)
        assert (await asyncio.wait_for(waiting, 2)).status == "accepted"
        assert len(reads) >= 2  # the first read, then the store again instead of the stale row


async def test_reads_do_not_wait_for_a_writer_and_cannot_write(tmp_path: Path) -> None:
    async with command_service(tmp_path) as (service, _hub, command_id):
        async with service.sessions() as writer, writer.begin():
            # A writer holds SQLite's write lock (BEGIN IMMEDIATE) and this instance's lock.
            await writer.execute(text("UPDATE gateways SET software = 'x'"))
            row = await asyncio.wait_for(service.get(command_id), 2)
            assert row.status == "sent"  # the last committed state, read without waiting
            assert len(await asyncio.wait_for(service.audit_trail(command_id), 2)) == 0
        async with service.read_sessions() as reader:
            with pytest.raises(ReadOnlySessionError):
                await reader.execute(text("UPDATE gateways SET software = 'y'"))


async def test_writers_queue_in_order_and_a_failed_one_lets_the_next_go(tmp_path: Path) -> None:
    async with command_service(tmp_path) as (service, _hub, _command_id):
        order: list[str] = []
        lock = cloud.db._THREADS[service.sessions.kw["bind"].sync_engine.dialect].write_lock
        release_a = asyncio.Event()

        async def write(name: str, fail: bool = False) -> None:
            async with service.sessions() as session, session.begin():
                await session.execute(text("UPDATE gateways SET software = :n"), {"n": name})
                order.append(name)
                if fail:
                    await release_a.wait()
                    raise RuntimeError("rolled back")

        first = asyncio.create_task(write("a", fail=True))
        await eventually(lambda: _true(order == ["a"]))  # a holds the lock
        rest = []
        for queued, name in enumerate("bcd", 1):
            rest.append(asyncio.create_task(write(name)))
            # Each is waiting for the lock before the next arrives (a machine's load cannot reorder them).
            await eventually(lambda queued=queued: _true(lock.waiting == queued))
        release_a.set()
        with pytest.raises(RuntimeError):
            await first
        # Released on rollback too (else these would wait out the 30 s lock timeout).
        await asyncio.wait_for(asyncio.gather(*rest), 5)
        assert order == ["a", "b", "c", "d"]
        async with service.read_sessions() as reader:
            assert await reader.scalar(text("SELECT software FROM gateways")) == "d"


async def _true(value: bool) -> bool:
    return value
