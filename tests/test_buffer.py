"""The edge buffer against real SQLite files: durability, ordering, bounds, quarantine, a killed process."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError
from structlog.testing import capture_logs

from edge.buffer import (
    GATEWAY_DEVICE_ID,
    BufferError,
    EventBuffer,
    EventDraft,
)
from protocol.models import Event, Location
from steward.config import BufferConfig

REPO = Path(__file__).resolve().parents[1]
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


class Clock:
    """A clock the test moves by hand; the buffer takes any callable returning an aware datetime."""

    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kw: float) -> None:
        self.now += timedelta(**kw)


def cfg(tmp_path: Path, **kw: object) -> BufferConfig:
    return BufferConfig(path=tmp_path / "var" / "buffer.db", **kw)  # type: ignore[arg-type]


def draft(type_: str = "meter.reading", device: str = "meter-1", **data: object) -> EventDraft:
    return EventDraft(device_id=device, type=type_, ts=T0, data=dict(data))


async def drain(buf: EventBuffer, limit: int = 100_000) -> list[Event]:
    events = await buf.take_batch(limit)
    buf.release([e.seq for e in events])
    return events


async def test_recorded_events_survive_close_and_two_reopens(tmp_path: Path) -> None:
    config = cfg(tmp_path)
    loc = Location(building="B2", apartment="1203")
    async with await EventBuffer.open(config) as buf:
        first = await buf.record(
            EventDraft(
                device_id="door-7", type="door.opened", ts=T0, data={"card": "42", "n": 1.5}, location=loc
            )
        )
        rest = await buf.record_many([draft(kwh=i) for i in range(3)])
    assert config.path.parent.is_dir()  # created by open()

    for _ in range(2):  # a second reopen proves the first one did not consume or rewrite anything
        async with await EventBuffer.open(config) as buf:
            stored = await drain(buf)
        assert stored == [first, *rest]
    assert stored[0].location == loc
    assert stored[0].data == {"card": "42", "n": 1.5}
    assert stored[0].ts == T0
    assert len({e.id for e in stored}) == 4


async def test_seq_is_monotonic_across_reopen_even_when_everything_was_acked(tmp_path: Path) -> None:
    config = cfg(tmp_path)
    async with await EventBuffer.open(config) as buf:
        before = await buf.record_many([draft() for _ in range(5)])
        await buf.ack([e.seq for e in before])
        assert (await buf.stats()).depth == 0
    async with await EventBuffer.open(config) as buf:
        after = await buf.record(draft())
    # A reused seq would make the uplink ack the wrong event; AUTOINCREMENT's high-water mark prevents it.
    assert after.seq == before[-1].seq + 1
    assert [e.seq for e in before] == list(range(1, 6))


async def test_concurrent_records_share_few_transactions(tmp_path: Path) -> None:
    async with await EventBuffer.open(cfg(tmp_path)) as buf:
        start = buf.commits
        events = await asyncio.gather(*(buf.record(draft(i=i)) for i in range(1000)))
        used = buf.commits - start
        seqs = sorted(e.seq for e in events)
        assert seqs == list(range(seqs[0], seqs[0] + 1000))
        assert used <= 10, f"1000 concurrent records took {used} transactions"

        start = buf.commits
        await buf.record_many([draft(i=i) for i in range(2000)])
        assert buf.commits - start == 1


async def test_a_bad_draft_fails_only_its_caller(tmp_path: Path) -> None:
    async with await EventBuffer.open(cfg(tmp_path)) as buf:
        good, bad, naive = await asyncio.gather(
            buf.record(draft(ok=1)),
            buf.record(draft(device="bad/device")),
            buf.record(EventDraft("meter-1", "meter.reading", datetime(2026, 1, 1), {})),  # naive: no tz
            return_exceptions=True,
        )
        assert isinstance(good, Event)
        assert isinstance(bad, ValidationError)
        assert isinstance(naive, ValidationError)
        stored = await drain(buf)
        assert stored == [good]


async def test_take_batch_puts_safety_first_then_seq_and_skips_in_flight(tmp_path: Path) -> None:
    async with await EventBuffer.open(cfg(tmp_path)) as buf:
        m1 = await buf.record(draft())
        d1 = await buf.record(draft("door.opened", "door-1"))
        f1 = await buf.record(draft("fire.alarm", "panel-1", zone=3))
        m2 = await buf.record(draft())
        f2 = await buf.record(draft("door.forced_open", "door-1"))

        first = await buf.take_batch(3)
        assert [e.seq for e in first] == [f1.seq, f2.seq, m1.seq]
        second = await buf.take_batch(10)
        assert [e.seq for e in second] == [d1.seq, m2.seq]
        assert await buf.take_batch(10) == []
        assert (await buf.stats()).in_flight == 5
        assert not await buf.wait_for_events(timeout=0.05)

        # A live alarm jumps a backlog that is partly in flight.
        buf.release([m1.seq])
        f3 = await buf.record(draft("fire.alarm", "panel-1"))
        assert await buf.wait_for_events(timeout=1)
        assert [e.seq for e in await buf.take_batch(10)] == [f3.seq, m1.seq]


async def test_wait_for_events_wakes_on_record_and_times_out_when_idle(tmp_path: Path) -> None:
    async with await EventBuffer.open(cfg(tmp_path)) as buf:
        assert not await buf.wait_for_events(timeout=0.05)
        waiter = asyncio.create_task(buf.wait_for_events(timeout=5))
        await asyncio.sleep(0.01)
        assert not waiter.done()
        await buf.record(draft())
        async with asyncio.timeout(2):
            assert await waiter


async def test_ack_deletes_for_good(tmp_path: Path) -> None:
    config = cfg(tmp_path)
    async with await EventBuffer.open(config) as buf:
        events = await buf.record_many([draft(i=i) for i in range(4)])
        taken = await buf.take_batch(2)
        await buf.ack([e.seq for e in taken])
        await buf.ack([9999])  # unknown seqs (already evicted, duplicate ack) are harmless
        stats = await buf.stats()
        assert (stats.depth, stats.in_flight) == (2, 0)
    async with await EventBuffer.open(config) as buf:
        assert [e.seq for e in await drain(buf)] == [e.seq for e in events[2:]]


async def test_full_buffer_evicts_telemetry_and_keeps_every_alarm_and_access_event(tmp_path: Path) -> None:
    config = cfg(tmp_path, max_bytes=256 * 1024)
    padding = "x" * 200
    async with await EventBuffer.open(config) as buf:
        critical = []
        with capture_logs() as logs:
            for i in range(60):
                critical.append(await buf.record(draft("fire.alarm", "panel-1", i=i)))
                critical.append(await buf.record(draft("access.granted", "door-1", i=i)))
                await buf.record_many([draft(i=i, pad=padding) for _ in range(50)])
        stats = await buf.stats()
        stored = await drain(buf)

    assert stats.evicted_total > 0
    assert stats.evicted_by_type == {"meter.reading": stats.evicted_total}
    # Freed pages are reused, so the file stays near the bound (one transaction of slack).
    assert stats.size_bytes <= config.max_bytes * 1.2

    by_seq = {e.seq: e for e in stored}
    assert all(c.seq in by_seq for c in critical), "an alarm or access event was evicted before telemetry"
    telemetry = [e for e in stored if e.type == "meter.reading"]
    assert 0 < len(telemetry) < 3000
    # Oldest telemetry goes first: whatever telemetry is left is the newest.
    assert min(e.seq for e in telemetry) > min(c.seq for c in critical)

    notices = [e for e in stored if e.type == "buffer.evicted"]
    assert notices
    assert all(n.device_id == GATEWAY_DEVICE_ID for n in notices)
    assert sum(n.data["by_type"]["meter.reading"] for n in notices) <= stats.evicted_total
    assert all(n.data["reason"] == "size" and n.data["total"] > 0 for n in notices)
    assert any(entry["event"] == "buffer.evicted" and entry["log_level"] == "warning" for entry in logs)


async def test_only_alarms_left_are_evicted_oldest_first_and_loudly(tmp_path: Path) -> None:
    config = cfg(tmp_path, max_bytes=128 * 1024)
    padding = "y" * 300
    async with await EventBuffer.open(config) as buf:
        with capture_logs() as logs:
            alarms = [
                await buf.record_many([draft("fire.alarm", "panel-1", pad=padding)]) for _ in range(600)
            ]
        stats = await buf.stats()
        stored = await drain(buf)
    kept = [e.seq for e in stored if e.type == "fire.alarm"]
    assert stats.evicted_by_type.get("fire.alarm", 0) > 0
    assert kept == [a[0].seq for a in alarms][-len(kept) :]  # the survivors are the newest
    assert any(entry["event"] == "buffer.evicted_safety_or_access" for entry in logs)
    assert all(entry["log_level"] == "error" for entry in logs if entry["event"].endswith("safety_or_access"))


async def test_age_eviction_removes_every_severity_past_max_age(tmp_path: Path) -> None:
    clock = Clock()
    config = cfg(tmp_path, max_age_days=1)
    async with await EventBuffer.open(config, clock=clock) as buf:
        old = await buf.record_many([draft("fire.alarm"), draft("door.opened"), draft()])
        clock.advance(hours=23)
        young = await buf.record(draft())
        clock.advance(hours=2)  # the first three are now 25 h old; housekeeping is due (> 60 s since last)
        newest = await buf.record(draft())
        stored = await drain(buf)
        stats = await buf.stats()
    seqs = [e.seq for e in stored if e.type != "buffer.evicted"]
    assert seqs == [young.seq, newest.seq]
    assert stats.evicted_by_type == {"fire.alarm": 1, "door.opened": 1, "meter.reading": 1}
    (notice,) = [e for e in stored if e.type == "buffer.evicted"]
    assert notice.data["reason"] == "age"
    assert notice.data["total"] == len(old)


async def test_age_retention_applies_at_open(tmp_path: Path) -> None:
    clock = Clock()
    config = cfg(tmp_path, max_age_days=2)
    async with await EventBuffer.open(config, clock=clock) as buf:
        await buf.record_many([draft() for _ in range(3)])
    clock.advance(days=3)
    async with await EventBuffer.open(config, clock=clock) as buf:
        stats = await buf.stats()
        stored = await drain(buf)
    assert stats.evicted_total == 3
    assert [e.type for e in stored] == ["buffer.evicted"]
    # Counters are kept in the file, so they survive restarts.
    async with await EventBuffer.open(config, clock=clock) as buf:
        assert (await buf.stats()).evicted_total == 3


@pytest.mark.parametrize(
    "garbage", [b"this is not a database " * 400, b"SQLite format 3\x00" + b"\xff" * 8000]
)
async def test_corrupt_file_is_quarantined_and_a_fresh_buffer_works(tmp_path: Path, garbage: bytes) -> None:
    config = cfg(tmp_path)
    config.path.parent.mkdir(parents=True)
    config.path.write_bytes(garbage)
    (config.path.parent / "buffer.db-wal").write_bytes(b"stale wal")

    with capture_logs() as logs:
        async with await EventBuffer.open(config) as buf:
            event = await buf.record(draft())
            assert [e.seq for e in await drain(buf)] == [event.seq]

    quarantined = sorted(config.path.parent.glob("buffer.db.corrupt-*"))
    assert quarantined[0].read_bytes() == garbage  # kept intact for inspection
    # The damaged file's WAL must never be replayed into the fresh one (SQLite may also drop it itself).
    wal = config.path.parent / "buffer.db-wal"
    assert not wal.exists() or wal.read_bytes() != b"stale wal"
    (entry,) = [e for e in logs if e["event"] == "buffer.corrupt_quarantined"]
    assert entry["log_level"] == "error"
    assert entry["moved_to"] == str(quarantined[0])
    assert entry["path"] == str(config.path)


async def test_a_busy_file_is_not_mistaken_for_a_corrupt_one(tmp_path: Path) -> None:
    """A lock held by another process must fail loudly, not quarantine a healthy buffer."""
    config = cfg(tmp_path)
    async with await EventBuffer.open(config) as buf:
        await buf.record(draft())
    other = sqlite3.connect(config.path, isolation_level=None)
    try:
        other.execute("PRAGMA locking_mode = EXCLUSIVE")
        other.execute("BEGIN EXCLUSIVE")
        with pytest.raises(BufferError, match="locked"):
            await EventBuffer.open(config)
    finally:
        other.close()
    assert not list(config.path.parent.glob("*.corrupt-*"))


async def test_remember_command_rejects_replays_across_restarts(tmp_path: Path) -> None:
    clock = Clock()
    config = cfg(tmp_path)
    async with await EventBuffer.open(config, clock=clock) as buf:
        assert await buf.remember_command("cmd-1", T0 + timedelta(minutes=5))
        assert not await buf.remember_command("cmd-1", T0 + timedelta(minutes=5))
    async with await EventBuffer.open(config, clock=clock) as buf:
        assert not await buf.remember_command("cmd-1", T0 + timedelta(minutes=5))
        assert await buf.remember_command("cmd-2", T0 + timedelta(minutes=5))
        # Kept past expiry by a margin; pruned lazily long after, when a replay is refused as expired anyway.
        clock.advance(hours=12)
        assert not await buf.remember_command("cmd-1", T0 + timedelta(minutes=5))
        clock.advance(days=2)
        assert await buf.remember_command("cmd-3", clock.now + timedelta(minutes=5))
    with sqlite3.connect(config.path) as db:
        assert [r[0] for r in db.execute("SELECT id FROM seen_commands ORDER BY id")] == ["cmd-3"]


async def test_close_is_idempotent_and_flushes_and_refuses_new_work(tmp_path: Path) -> None:
    config = cfg(tmp_path)
    buf = await EventBuffer.open(config)
    pending = [asyncio.create_task(buf.record(draft(i=i))) for i in range(50)]
    await asyncio.sleep(0)  # let them queue
    await asyncio.gather(buf.close(), buf.close())
    await buf.close()
    events = await asyncio.gather(*pending)
    with pytest.raises(BufferError):
        await buf.record(draft())
    async with await EventBuffer.open(config) as again:
        assert {e.seq for e in await drain(again)} == {e.seq for e in events}


CHILD = """
import asyncio, sys
from datetime import UTC, datetime
from pathlib import Path
from edge.buffer import EventBuffer, EventDraft
from steward.config import BufferConfig
from steward.logging import configure_logging

async def main():
    configure_logging(json=True)  # logs to stderr; stdout carries only the committed seqs
    buf = await EventBuffer.open(BufferConfig(path=Path(sys.argv[1])))
    i = 0
    while True:
        i += 1
        burst = [
            buf.record(EventDraft("meter-1", "meter.reading", datetime.now(UTC), {"i": i, "k": k}))
            for k in range(7)
        ]
        for fut in asyncio.as_completed(burst):
            event = await fut
            print(event.seq, flush=True)

asyncio.run(main())
"""


async def test_sigkill_mid_stream_loses_no_event_record_returned(tmp_path: Path) -> None:
    config = cfg(tmp_path)
    config.path.parent.mkdir(parents=True)
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(CHILD))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        str(config.path),
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.stdout is not None
    printed: list[int] = []
    try:
        async with asyncio.timeout(60):
            while len(printed) < 2000:
                line = await proc.stdout.readline()
                assert line, "child exited early"
                printed.append(int(line))
        proc.send_signal(signal.SIGKILL)
        async with asyncio.timeout(30):
            rest, _ = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == -signal.SIGKILL
    printed += [int(x) for x in rest.split()]

    async with await EventBuffer.open(config) as buf:
        stored = {e.seq for e in await drain(buf, limit=1_000_000)}
    missing = set(printed) - stored
    assert not missing, f"{len(missing)} acknowledged events lost, e.g. {sorted(missing)[:5]}"


# ---- the uplink's path: wire JSON straight from SQLite, high-water marks, acks behind the caller ----


async def test_take_json_is_the_same_events_as_take_batch(tmp_path: Path) -> None:
    """What the uplink sends without building models parses to exactly the events take_batch builds."""
    from protocol import EventBatch

    config = cfg(tmp_path)
    async with await EventBuffer.open(config) as buf:
        await buf.record_many(
            [
                EventDraft(
                    "door-7",
                    "door.opened",
                    T0.replace(microsecond=0),
                    {"card": "42", "n": 1.5, "big": 10**20, "text": 'é"\\\n', "none": None, "list": [1, {}]},
                    Location(building="B2", apartment="1203"),
                ),
                EventDraft("panel-1", "fire.alarm", datetime(1969, 7, 20, 20, 17, 40, 1, tzinfo=UTC), {}),
                draft(kwh=1.0e300),
            ]
        )
        seqs, body = await buf.take_json(10)
        buf.release(seqs)
        events = await buf.take_batch(10)
    batch = EventBatch.model_validate_json(
        b'{"batch_id":"b","site_id":"s","gateway_id":"g","sent_at":"2026-03-01T12:00:00Z","events":['
        + body
        + b"]}"
    )
    assert seqs == [e.seq for e in events] == [2, 1, 3]  # safety first, like take_batch
    assert list(batch.events) == events


async def test_takes_resume_after_what_is_in_flight_and_a_release_goes_again_first(tmp_path: Path) -> None:
    async with await EventBuffer.open(cfg(tmp_path)) as buf:
        await buf.record_many([draft(i=i) for i in range(10)])
        a, _ = await buf.take_json(3)
        b, _ = await buf.take_json(3)
        assert (a, b) == ([1, 2, 3], [4, 5, 6])
        buf.release(a[1:])  # no ack came for two of them
        c, _ = await buf.take_json(3)
        assert c == [2, 3, 7]  # released ones first (seq order), skipping what is still in flight
        d, _ = await buf.take_json(10)
        assert d == [8, 9, 10]
        assert (await buf.take_json(10))[0] == []
        f = await buf.record(draft("fire.alarm", "panel-1"))
        assert (await buf.take_json(10))[0] == [f.seq]  # new rows past the marks are found at once
        await buf.ack([*a, *b, *c, *d, f.seq])
        assert (await buf.stats()).depth == 0


async def test_a_damaged_row_is_sent_once_then_dropped_on_the_resend(tmp_path: Path) -> None:
    """The fast path trusts what the buffer wrote; if the cloud refuses the batch (no ack, so it is
    released), the resend validates every row and drops the damaged one instead of blocking the queue."""
    config = cfg(tmp_path)
    async with await EventBuffer.open(config) as buf:
        await buf.record_many([draft(i=i) for i in range(3)])
        with sqlite3.connect(config.path) as conn:
            conn.execute("UPDATE events SET device_id = 'bad/id' WHERE seq = 2")
        with capture_logs() as logs:
            first, body = await buf.take_json(10)
            assert first == [1, 2, 3] and b"bad/id" in body
            buf.release(first)  # the cloud refused the batch: no ack
            again, body = await buf.take_json(10)
            assert again == [1, 3] and b"bad/id" not in body
            await buf.ack(again)

            # A row SQLite cannot read as JSON: that take validates at once and drops it.
            await buf.record_many([draft(i=i) for i in range(2)])
            with sqlite3.connect(config.path) as conn:
                conn.execute("UPDATE events SET payload = '{not json' WHERE seq = 5")
            assert (await buf.take_json(10))[0] == [4]
        assert [r["seq"] for r in logs if r["event"] == "buffer.bad_row_dropped"] == [2, 5]
        assert (await buf.stats()).depth == 1


async def test_ack_soon_deletes_behind_the_caller_and_close_waits_for_it(tmp_path: Path) -> None:
    config = cfg(tmp_path)
    async with await EventBuffer.open(config) as buf:
        await buf.record_many([draft(i=i) for i in range(6)])
        first, _ = await buf.take_json(2)
        second, _ = await buf.take_json(2)
        buf.ack_soon(first)
        buf.ack_soon(second)
        # Not deleted yet, but not taken again either: acked events stay in flight until their delete.
        assert (await buf.take_json(10))[0] == [5, 6]
    with sqlite3.connect(config.path) as conn:
        left = [r[0] for r in conn.execute("SELECT seq FROM events ORDER BY seq")]
    assert left == [5, 6]


async def test_a_failed_ack_delete_sends_the_events_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with await EventBuffer.open(cfg(tmp_path)) as buf:
        await buf.record_many([draft(i=i) for i in range(3)])
        seqs, _ = await buf.take_json(3)

        def broken(_seqs: object) -> int:
            raise sqlite3.OperationalError("disk I/O error")

        monkeypatch.setattr(buf._store, "ack", broken)
        with capture_logs() as logs:
            buf.ack_soon(seqs)
            async with asyncio.timeout(5):
                while not await buf.wait_for_events(timeout=0.05):
                    pass
        assert any(r["event"] == "buffer.ack_failed_will_resend" for r in logs)
        monkeypatch.undo()
        again, _ = await buf.take_json(3)
        assert again == seqs  # the cloud de-duplicates them; nothing was lost
        await buf.ack(again)
        assert (await buf.stats()).depth == 0


async def test_a_stuck_commit_fails_record_after_the_commit_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    import edge.buffer as buffer_module

    monkeypatch.setattr(buffer_module, "COMMIT_TIMEOUT_S", 0.3)
    monkeypatch.setattr(buffer_module, "WATCHDOG_INTERVAL_S", 0.05)
    async with await EventBuffer.open(cfg(tmp_path)) as buf:
        real_insert = buf._store.insert

        def stuck_disk(batch: object) -> object:
            time.sleep(1.0)
            return real_insert(batch)  # type: ignore[arg-type]

        monkeypatch.setattr(buf._store, "insert", stuck_disk)
        started = asyncio.get_running_loop().time()
        results = await asyncio.gather(buf.record(draft()), buf.record(draft()), return_exceptions=True)
        waited = asyncio.get_running_loop().time() - started
        assert all(isinstance(r, BufferError) and "did not finish" in str(r) for r in results)
        assert 0.3 <= waited < 0.9  # failed by the deadline, not when the disk came back
        monkeypatch.undo()
        # The late commit still lands: the caller was told "possibly recorded", and it was.
        await asyncio.sleep(1.0)
        assert (await buf.stats()).depth == 2


async def test_an_event_larger_than_the_protocol_allows_is_refused_and_the_rest_are_kept(
    tmp_path: Path,
) -> None:
    from protocol.models import MAX_EVENT_BYTES

    async with await EventBuffer.open(cfg(tmp_path)) as buf:
        small, big, other = await asyncio.gather(
            buf.record(draft(kwh=1.0)),
            buf.record(draft("intercom.call", "intercom-1", sdp="x" * MAX_EVENT_BYTES)),
            buf.record(draft(kwh=2.0)),
            return_exceptions=True,
        )
        assert isinstance(big, ValueError)
        assert "intercom.call from intercom-1" in str(big) and f"limit of {MAX_EVENT_BYTES:,}" in str(big)
        assert isinstance(small, Event) and isinstance(other, Event)
        assert [e.seq for e in await drain(buf)] == [small.seq, other.seq]


async def test_take_json_is_bounded_in_bytes_and_the_next_take_resumes_where_it_stopped(
    tmp_path: Path,
) -> None:
    async with await EventBuffer.open(cfg(tmp_path)) as buf:
        await buf.record_many([draft(i=i, blob="b" * 10_000) for i in range(10)])
        await buf.record(draft("fire.alarm", "panel-1", blob="f" * 10_000))
        first, body = await buf.take_json(100, max_bytes=35_000)
        assert first == [11, 1, 2]  # safety first, and as many as fit
        assert 30_000 < len(body) <= 35_000
        second, _ = await buf.take_json(100, max_bytes=35_000)
        assert second == [3, 4, 5]
        one, body = await buf.take_json(100, max_bytes=5_000)
        assert one == [6] and len(body) > 10_000  # one event always goes, however small the bound
        buf.release([*first, *second])  # no ack came: the resend path (full validation) bounds as well
        again, body = await buf.take_json(100, max_bytes=35_000)
        assert again == [11, 1, 2]
        assert len(body) <= 35_000
        rest, _ = await buf.take_json(100)
        assert rest == [3, 4, 5, 7, 8, 9, 10]


async def test_the_byte_bounds_count_utf8_bytes_not_characters(tmp_path: Path) -> None:
    from protocol.models import MAX_EVENT_BYTES

    async with await EventBuffer.open(cfg(tmp_path)) as buf:
        with pytest.raises(ValueError, match="bytes as JSON"):
            await buf.record(draft("intercom.call", "intercom-1", note="访" * (MAX_EVENT_BYTES // 3 + 10)))
        await buf.record_many([draft(note="访客" * 2_000) for _ in range(4)])  # 12 KB each, 4,000 characters
        seqs, body = await buf.take_json(10, max_bytes=30_000)
        assert seqs == [1, 2]
        assert len(body) <= 30_000
