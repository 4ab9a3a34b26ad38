"""Access decisions at the edge, with the cloud absent: a Modbus door module with a Wiegand reader and a
barrier gate on real sockets, the gateway's own drivers and buffer, credentials in the gateway's SQLite.

No plate camera driver exists yet, so plate reads enter the gateway as the camera's driver would hand
them over: ``gateway.record(gate_driver, Reading("gate.plate_read", ...))``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from drivers.base import Reading
from edge.access import AccessControl, AccessSettings
from edge.credentials import ApplyOutcome, CredentialStore, local_db_path
from edge.gateway import Gateway
from protocol import Event, Topics
from protocol.credentials import Credential, CredentialSync, SyncState, hash_secret
from protocol.models import utcnow
from simulators.modbus_server import free_port
from simulators.registry import run_site_simulators
from steward.broker import EmbeddedBroker
from steward.config import SiteConfig
from steward.mqtt import MqttClient
from tests.stack import site_config
from tests.test_fire_linkage import modbus, until

SALT = "oak-garden"  # the default salt is the site id


def devices() -> list[dict[str, Any]]:
    return [
        {"id": "door-a", "kind": "door_access", "poll_interval_s": 0.05, "transport": modbus(free_port())},
        {"id": "door-b", "kind": "door_access", "poll_interval_s": 0.05, "transport": modbus(free_port())},
        {
            "id": "gate-main",
            "kind": "barrier_gate",
            "poll_interval_s": 0.1,
            "transport": modbus(free_port()),
            "options": {"pulse_s": 0.02, "travel_timeout_s": 2.0, "confirm_interval_s": 0.02},
        },
    ]


def cred(cid: str, kind: str, value: str, doors: list[str], **kw: Any) -> Credential:
    if kind in ("pin", "visitor_pin", "visitor_qr"):
        value = hash_secret(SALT, value)
    holder = kw.pop("holder", f"holder of {cid}")
    return Credential(id=cid, kind=kind, value=value, holder=holder, doors=doors, **kw)  # type: ignore[arg-type]


def sync(
    frm: int, to: int, upserts: list[Credential], *, full: bool = False, deletes: tuple[str, ...] = ()
) -> bytes:
    return CredentialSync(
        site_id="oak-garden",
        gateway_id="gw-1",
        from_version=frm,
        to_version=to,
        full=full,
        upserts=upserts,
        deletes=list(deletes),
    ).to_bytes()


@dataclass
class Rig:
    site: SiteConfig
    gateway: Gateway
    access: AccessControl
    sims: dict[str, Any]
    seen: list[Event]

    def decisions(self) -> list[tuple[str, str, str | None]]:
        return [
            (e.device_id, e.type.removeprefix("access."), e.data.get("reason"))
            for e in self.seen
            if e.type in ("access.granted", "access.denied")
        ]

    async def decided(self, n: int) -> tuple[str, str, str | None]:
        await until(lambda: len(self.decisions()) >= n, 2.0, f"decision #{n}")
        return self.decisions()[n - 1]

    def unlocks(self, door: str) -> int:
        return sum(1 for _, released in self.sims[door].relay_history if released)


@contextlib.asynccontextmanager
async def running_access(site: SiteConfig) -> AsyncIterator[Rig]:
    async with run_site_simulators(site, travel_time_s=0.1) as sims:
        gateway = Gateway(site)
        seen: list[Event] = []

        async def watch(event: Event) -> None:
            seen.append(event)

        gateway.hooks.append(watch)
        store = await CredentialStore.open(local_db_path(site))
        access = AccessControl(gateway, store, AccessSettings(unlock_s=0.3)).attach()
        gateway.access = access
        async with asyncio.TaskGroup() as tg:
            gw = tg.create_task(gateway.run())
            try:
                async with asyncio.timeout(10):
                    await gateway.started.wait()
                await asyncio.sleep(0.15)  # first polls are the drivers' baseline
                yield Rig(site, gateway, access, sims, seen)
            finally:
                gw.cancel()


@pytest.fixture
def offline_site(tmp_path: Path) -> SiteConfig:
    return site_config(tmp_path, free_port(), devices())  # no broker: the cloud is absent


async def test_cards_granted_and_denied_offline_within_50ms(offline_site: SiteConfig) -> None:
    now = utcnow()
    async with running_access(offline_site) as rig:
        assert rig.gateway.client is not None and not rig.gateway.client.is_connected
        result = await rig.access.handle_sync(
            sync(
                0,
                1,
                [
                    cred("c-ok", "card", "017-12345", ["door-a", "gate-main"], holder="Li Wei, 3-2-501"),
                    cred("c-old", "card", "017-00002", ["door-a"], valid_until=now - timedelta(days=1)),
                    cred("c-b", "card", "017-00003", ["door-b"]),
                    cred("c-lost", "card", "017-00004", ["door-a"], revoked=True),
                    cred("p-1", "pin", "4711", ["door-a"]),
                ],
            )
        )
        assert result is not None and result.outcome is ApplyOutcome.APPLIED
        door = rig.sims["door-a"]

        door.present_card(17, 12345)
        assert await rig.decided(1) == ("door-a", "granted", None)
        await until(lambda: rig.unlocks("door-a") == 1, 1.0, "door-a unlocked")
        presented = next(e for e in rig.seen if e.type == "access.presented")
        granted = next(e for e in rig.seen if e.type == "access.granted")
        assert granted.data["holder"] == "Li Wei, 3-2-501" and granted.data["presented"] == "017-12345"
        # From the presentation reaching the gateway to the relay released at the module.
        mono, wall = time.monotonic(), utcnow()
        relay_wall = wall + timedelta(seconds=door.relay_history[-1][0] - mono)
        latency_ms = (relay_wall - presented.received_at).total_seconds() * 1000
        assert latency_ms < 50, latency_ms
        assert granted.data["decision_ms"] < 50

        for n, (card, reason) in enumerate(
            [
                (999, "unknown card"),
                (2, "expired"),
                (3, "not valid for this door"),
                (4, "revoked"),
            ],
            start=2,
        ):
            door.present_card(17, card)
            assert await rig.decided(n) == ("door-a", "denied", reason)
            await asyncio.sleep(0.06)  # one poll per presentation, as at a real reader
        door.enter_pin(4711)
        assert await rig.decided(6) == ("door-a", "granted", None)
        door.enter_pin(1234)
        assert await rig.decided(7) == ("door-a", "denied", "unknown pin")
        pin_events = [
            e for e in rig.seen if e.type.startswith("access.") and e.data.get("credential_kind") == "pin"
        ]
        assert all("4711" not in str(e.data.get("presented", "")) for e in pin_events)
        await asyncio.sleep(0.4)
        assert rig.unlocks("door-a") == 2  # the card and the PIN, nothing for the denials
        assert max(rig.access.stats.decision_ms) < 50


async def test_plates_open_resident_gates_and_unknown_plates_wait(offline_site: SiteConfig) -> None:
    async with running_access(offline_site) as rig:
        await rig.access.handle_sync(sync(0, 1, [cred("car-1", "plate", "粤B12345", ["gate-main"])]))
        gate = rig.gateway.drivers["gate-main"]
        sim = rig.sims["gate-main"]

        await rig.gateway.record(gate, Reading("gate.plate_read", {"plate": "粤b·123 45", "lane": "in"}))
        assert await rig.decided(1) == ("gate-main", "granted", None)
        await until(lambda: sim.gate_state == "open", 2.0, "gate open")
        assert (
            rig.decisions() and next(e for e in rig.seen if e.type == "access.granted").data["lane"] == "in"
        )

        await gate.execute("close", {})
        await until(lambda: sim.gate_state == "closed", 2.0, "gate closed")
        await rig.gateway.record(gate, Reading("gate.plate_read", {"plate": "京A99999", "lane": "in"}))
        assert await rig.decided(2) == ("gate-main", "denied", "unknown plate")
        await asyncio.sleep(0.3)
        assert sim.gate_state == "closed"


async def test_visitor_passes_before_during_after_and_counted(offline_site: SiteConfig) -> None:
    now = utcnow()
    async with running_access(offline_site) as rig:
        await rig.access.handle_sync(
            sync(
                0,
                1,
                [
                    cred("v-later", "visitor_pin", "111111", ["door-a"], valid_from=now + timedelta(hours=1)),
                    cred(
                        "v-gone", "visitor_pin", "222222", ["door-a"], valid_until=now - timedelta(minutes=1)
                    ),
                    cred(
                        "v-now", "visitor_pin", "333333", ["door-a"], valid_until=now + timedelta(seconds=1.5)
                    ),
                    cred("v-twice", "visitor_qr", "QR-8F3A", ["door-a"], max_uses=2),
                ],
            )
        )
        door = rig.sims["door-a"]
        door.enter_pin(111111)
        assert await rig.decided(1) == ("door-a", "denied", "not yet valid")
        await asyncio.sleep(0.06)
        door.enter_pin(222222)
        assert await rig.decided(2) == ("door-a", "denied", "expired")
        await asyncio.sleep(0.06)
        door.enter_pin(333333)
        assert await rig.decided(3) == ("door-a", "granted", None)

        # A QR pass read by a scanner reporting through the door's driver.
        qr = Reading("access.presented", {"credential": "qr", "code": "QR-8F3A", "reader": "door-a"})
        driver = rig.gateway.drivers["door-a"]
        for n, expected in ((4, None), (5, None), (6, "uses exhausted")):
            await rig.gateway.record(driver, qr)
            assert (await rig.decided(n))[2] == expected
        granted = [e for e in rig.seen if e.type == "access.granted" and e.data["credential_id"] == "v-twice"]
        assert [(e.data["uses"], e.data["max_uses"]) for e in granted] == [(1, 2), (2, 2)]

        # Still offline, the same pass stops working at its expiry.
        await asyncio.sleep(max(0.0, (now + timedelta(seconds=1.6) - utcnow()).total_seconds()))
        door.enter_pin(333333)
        assert await rig.decided(7) == ("door-a", "denied", "expired")

    # Uses are on disk: a restarted gateway does not hand out a third entry.
    store = await CredentialStore.open(local_db_path(offline_site))
    assert store.uses("v-twice") == 2 and store.version == 1


async def test_sync_in_order_gap_and_full_replace(tmp_path: Path) -> None:
    site = site_config(tmp_path, free_port(), devices())
    async with running_access(site) as rig:
        a = rig.access
        first = await a.handle_sync(sync(0, 1, [cred("c1", "card", "1", ["door-a"])]))
        assert first is not None and first.outcome is ApplyOutcome.APPLIED
        r = await a.handle_sync(sync(1, 2, [cred("c2", "card", "2", ["door-a"])], deletes=("c1",)))
        assert r is not None and r.outcome is ApplyOutcome.APPLIED and r.version == 2
        assert a.store.get("c1") is None and a.store.get("c2") is not None

        gap = await a.handle_sync(sync(3, 4, [cred("c4", "card", "4", ["door-a"])]))
        assert gap is not None and gap.outcome is ApplyOutcome.GAP and a.store.version == 2
        assert a.store.get("c4") is None
        assert a.sync_state().rejected == "delta is from version 3; this gateway is at 2"
        stale = await a.handle_sync(sync(1, 2, [cred("c9", "card", "9", ["door-a"])]))
        assert stale is not None and stale.outcome is ApplyOutcome.STALE and a.store.get("c9") is None

        full = await a.handle_sync(sync(0, 7, [cred("f1", "card", "10", ["door-b"])], full=True))
        assert full is not None and full.outcome is ApplyOutcome.APPLIED
        assert len(a.store) == 1 and a.store.get("c2") is None and a.store.version == 7

        for bad in (b"{not json", b'{"v": 1}', sync(0, 1, []).replace(b"gw-1", b"gw-2"), b"x" * 10):
            assert await a.handle_sync(bad) is None
        assert a.stats.malformed_syncs == 4
        assert a.store.version == 7

    store = await CredentialStore.open(local_db_path(site))
    assert store.version == 7 and [c.id for c in store.lookup("card", "10")] == ["f1"]


async def test_sync_state_announced_on_connect_and_after_sync(tmp_path: Path) -> None:
    async with EmbeddedBroker(port=0) as broker:
        site = site_config(tmp_path, broker.port, devices()[:1])
        topics = Topics(site.uplink.topic_prefix, site.site_id, site.gateway_id)
        async with MqttClient("127.0.0.1", broker.port, client_id="cloud-probe") as cloud:
            await cloud.subscribe(topics.sync)
            async with running_access(site) as rig:
                first = SyncState.model_validate_json((await cloud.get_message(timeout=5)).payload)
                assert (first.version, first.credentials) == (0, 0)
                await rig.access.handle_sync(sync(0, 3, [cred("c1", "card", "1", ["door-a"])]))
                after = SyncState.model_validate_json((await cloud.get_message(timeout=5)).payload)
                assert (after.version, after.credentials, after.rejected) == (3, 1, None)
                await rig.access.handle_sync(sync(5, 6, []))
                gap = SyncState.model_validate_json((await cloud.get_message(timeout=5)).payload)
                assert gap.version == 3 and gap.rejected is not None and "from version 5" in gap.rejected
