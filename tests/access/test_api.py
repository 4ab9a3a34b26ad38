"""The access API on a real cloud (HTTP, SQLite, broker) with a real gateway registering the site's doors,
and a second, hand-driven gateway that speaks the sync protocol so each message can be inspected."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from protocol.credentials import CredentialSync, SyncState, hash_secret
from protocol.models import utcnow
from protocol.topics import Topics
from steward.mqtt import Message, MqttClient
from tests.access.rig import SITE, Estate, estate, mqtt_device, until

pytestmark = pytest.mark.timeout(90)
CREDS = f"/api/v1/sites/{SITE}/credentials"


def doors() -> list[dict[str, Any]]:
    return [
        mqtt_device("door-a", "door_access"),
        mqtt_device("intercom-1", "video_intercom"),
    ]


async def registered(e: Estate) -> None:
    async def known() -> bool:
        return (await e.http.get("/api/v1/devices/door-a")).status_code == 200

    await until(known, 10, "door-a registered in the cloud")


class FakeGateway:
    """A second gateway of the site, driven by hand: reports a version, collects what the cloud sends."""

    def __init__(self, client: MqttClient, topics: Topics) -> None:
        self.client, self.topics = client, topics
        self.received: list[CredentialSync] = []

    async def report(self, version: int, credentials: int) -> None:
        state = SyncState(
            site_id=SITE,
            gateway_id=self.topics.gateway_id,
            version=version,
            credentials=credentials,
            at=utcnow(),
        )
        await self.client.publish(self.topics.sync, state.to_bytes(), qos=1)

    async def _next_credentials(self, timeout: float) -> Message:
        # amqtt 0.12 now and then hands a new subscriber another topic's retained status (seen in
        # CI, not reproducible alone); only our credentials topic is what this test is about.
        async with asyncio.timeout(timeout):
            while True:
                msg = await self.client.get_message()
                if msg.topic == self.topics.credentials:
                    return msg

    async def next_sync(self, timeout: float = 5) -> CredentialSync:
        msg = await self._next_credentials(timeout)
        assert not msg.retain
        sync = CredentialSync.model_validate_json(msg.payload)
        self.received.append(sync)
        return sync

    async def drain(self, quiet_s: float = 0.7) -> list[CredentialSync]:
        """Everything the cloud sends until it has been quiet for ``quiet_s``."""
        got: list[CredentialSync] = []
        with contextlib.suppress(TimeoutError):
            while True:
                got.append(await self.next_sync(quiet_s))
        return got

    async def quiet(self, for_s: float = 0.5) -> None:
        with contextlib.suppress(TimeoutError):
            msg = await self._next_credentials(for_s)
            raise AssertionError(f"unexpected message on {msg.topic}: {msg.payload[:200]!r}")


@contextlib.asynccontextmanager
async def fake_gateway(e: Estate, gateway_id: str = "gw-2") -> AsyncIterator[FakeGateway]:
    topics = Topics("steward", SITE, gateway_id)
    async with MqttClient(e.broker.host, e.broker.port, client_id=f"fake-{gateway_id}") as client:
        await client.subscribe(topics.credentials, qos=1)
        yield FakeGateway(client, topics)


async def test_credentials_crud_and_what_the_api_never_shows(tmp_path: Path) -> None:
    async with estate(tmp_path, doors()) as e:
        await registered(e)
        r = await e.http.post(
            CREDS, json={"kind": "pin", "value": "4711", "doors": ["door-a"], "holder": "1-1"}
        )
        assert r.status_code == 201, r.text
        pin = r.json()
        assert pin["value"] is None and pin["id"].startswith("c-")
        r = await e.http.post(CREDS, json={"kind": "plate", "value": "粤b·123 45", "doors": ["door-a"]})
        plate = r.json()
        assert plate["value"] == "粤B12345"
        r = await e.http.post(
            CREDS,
            json={"id": "c-1042", "kind": "card", "value": " 017-12345 ", "doors": ["door-a", "intercom-1"]},
        )
        assert r.status_code == 201 and r.json()["value"] == "017-12345"
        await e.gateway_at(r.json()["version"])
        assert e.store.get(pin["id"]).value == hash_secret(SITE, "4711")
        assert e.store.get("c-1042").doors == ["door-a", "intercom-1"]

        got = (await e.http.get(f"{CREDS}/{pin['id']}")).json()
        assert got["value"] is None
        page = (await e.http.get(CREDS, params={"limit": 2})).json()
        assert len(page["items"]) == 2 and page["next_cursor"]
        rest = (await e.http.get(CREDS, params={"limit": 2, "cursor": page["next_cursor"]})).json()
        assert rest["next_cursor"] is None
        assert sorted(i["id"] for i in page["items"] + rest["items"]) == sorted(
            ["c-1042", pin["id"], plate["id"]]
        )
        assert page["version"] == e.store.version
        assert [i["kind"] for i in (await e.http.get(CREDS, params={"kind": "plate"})).json()["items"]] == [
            "plate"
        ]

        # A PATCH that changes nothing takes no version.
        version = await e.site_version()
        r = await e.http.patch(f"{CREDS}/c-1042", json={"holder": ""})
        assert r.status_code == 200 and await e.site_version() == version
        r = await e.http.patch(
            f"{CREDS}/c-1042", json={"valid_until": (utcnow() + timedelta(days=30)).isoformat()}
        )
        assert r.json()["version"] == version + 1
        r = await e.http.patch(f"{CREDS}/c-1042", json={"valid_until": None})
        assert r.json()["valid_until"] is None

        assert (await e.http.get(f"/api/v1/sites/other-site/credentials/{pin['id']}")).status_code == 404
        assert (await e.http.delete(f"{CREDS}/nope")).status_code == 404


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"kind": "card", "value": "1", "doors": ["door-x"]}, 422, "'door-x' is not a device of site"),
        ({"kind": "card", "value": "1", "doors": []}, 422, "doors"),
        ({"kind": "pin", "value": "12a4", "doors": ["door-a"]}, 422, "4 to 12 digits"),
        ({"kind": "visitor_pin", "value": "1234", "doors": ["door-a"]}, 422, "kind"),
        ({"kind": "card", "value": "1 2", "doors": ["door-a"]}, 422, "letters, digits"),
        (
            {
                "kind": "card",
                "value": "77",
                "doors": ["door-a"],
                "valid_from": "2026-06-01T00:00:00Z",
                "valid_until": "2026-05-01T00:00:00Z",
            },
            422,
            "valid_until must be after valid_from",
        ),
        (
            {"kind": "card", "value": "77", "doors": ["door-a"], "valid_until": "2026-05-01T00:00:00"},
            422,
            "zone",
        ),
    ],
)
async def test_bad_credentials_are_refused_with_the_reason(
    tmp_path: Path, body: dict[str, Any], status: int, needle: str
) -> None:
    async with estate(tmp_path, doors()) as e:
        await registered(e)
        version = await e.site_version()
        r = await e.http.post(CREDS, json=body)
        assert r.status_code == status, r.text
        assert needle in r.json()["error"]["message"]
        assert await e.site_version() == version


async def test_a_card_or_plate_belongs_to_one_live_credential(tmp_path: Path) -> None:
    async with estate(tmp_path, doors()) as e:
        await registered(e)
        first = (await e.http.post(CREDS, json={"kind": "card", "value": "900", "doors": ["door-a"]})).json()
        r = await e.http.post(CREDS, json={"kind": "card", "value": "900", "doors": ["door-a"]})
        assert r.status_code == 409 and first["id"] in r.json()["error"]["message"]
        assert (
            await e.http.post(
                CREDS, json={"id": first["id"], "kind": "card", "value": "901", "doors": ["door-a"]}
            )
        ).status_code == 409
        await e.http.patch(f"{CREDS}/{first['id']}", json={"revoked": True})
        second = await e.http.post(CREDS, json={"kind": "card", "value": "900", "doors": ["door-a"]})
        assert second.status_code == 201
        # Un-revoking the old one would make two live holders of card 900.
        r = await e.http.patch(f"{CREDS}/{first['id']}", json={"revoked": False})
        assert r.status_code == 409


async def test_visitor_pass_code_is_shown_once_and_hashed_with_the_site_salt(tmp_path: Path) -> None:
    async with estate(tmp_path, doors(), access={"pin_salt": "s3cret-salt!", "unlock_s": 1.0}) as e:
        await registered(e)
        r = await e.http.put(f"/api/v1/sites/{SITE}/access-settings", json={"pin_salt": "s3cret-salt!"})
        assert r.status_code == 200 and r.json()["custom_salt"] is True
        soon = (utcnow() + timedelta(hours=1)).isoformat()
        r = await e.http.post(
            f"/api/v1/sites/{SITE}/visitor-passes",
            json={"doors": ["door-a"], "valid_until": soon, "kind": "pin"},
        )
        assert r.status_code == 201, r.text
        created = r.json()
        assert created["kind"] == "visitor_pin" and created["max_uses"] == 1
        await e.gateway_at(created["version"])
        assert e.store.get(created["id"]).value == hash_secret("s3cret-salt!", created["code"])

        # The gateway, configured with the same salt, admits the code.
        door = e.sims["door-a"]
        await door.present_pin(created["code"])
        granted = await e.wait_events("access.granted", device_id="door-a")
        assert granted[0]["data"]["credential_id"] == created["id"]

        again = (await e.http.get(f"/api/v1/sites/{SITE}/visitor-passes/{created['id']}")).json()
        assert "code" not in again and again["value"] is None
        # A salt change now would orphan the stored digests.
        r = await e.http.put(f"/api/v1/sites/{SITE}/access-settings", json={"pin_salt": "another-salt"})
        assert r.status_code == 409
        past = (utcnow() - timedelta(minutes=1)).isoformat()
        r = await e.http.post(
            f"/api/v1/sites/{SITE}/visitor-passes", json={"doors": ["door-a"], "valid_until": past}
        )
        assert r.status_code == 422
        r = await e.http.patch(f"{CREDS}/{created['id']}", json={"value": "123456"})
        assert r.status_code == 422
        card = (await e.http.post(CREDS, json={"kind": "card", "value": "5", "doors": ["door-a"]})).json()
        assert (await e.http.get(f"/api/v1/sites/{SITE}/visitor-passes/{card['id']}")).status_code == 404


async def test_deltas_are_compacted_and_gateways_are_answered_by_what_they_report(tmp_path: Path) -> None:
    async with estate(tmp_path, doors()) as e, fake_gateway(e) as gw2:
        await registered(e)
        await gw2.report(0, 0)
        first = await gw2.next_sync()
        assert first.full and first.gateway_id == "gw-2"
        base = first.to_version

        a = (await e.http.post(CREDS, json={"kind": "card", "value": "1", "doors": ["door-a"]})).json()
        b = (await e.http.post(CREDS, json={"kind": "card", "value": "2", "doors": ["door-a"]})).json()
        await e.http.patch(f"{CREDS}/{a['id']}", json={"holder": "renamed"})
        await e.http.patch(f"{CREDS}/{a['id']}", json={"revoked": True})
        await e.http.delete(f"{CREDS}/{b['id']}")
        latest = await e.site_version()
        assert latest == base + 5

        # Pushed as the changes happened (it said it was online by reporting), one delta after another,
        # each from the version the previous one took it to.
        pushed = await gw2.drain()
        assert pushed and all(not p.full for p in pushed)
        assert pushed[0].from_version == base and pushed[-1].to_version == latest
        assert all(b.from_version == a.to_version for a, b in itertools.pairwise(pushed))
        # Now it says it is still at `base` (say those were lost): one delta, compacted.
        await gw2.report(base, 0)
        delta = await gw2.next_sync()
        assert (delta.full, delta.from_version, delta.to_version) == (False, base, latest)
        assert [c.id for c in delta.upserts] == [a["id"]]
        assert delta.upserts[0].holder == "renamed" and delta.upserts[0].revoked
        assert delta.deletes == [b["id"]]

        # From a version between: only what changed after it.
        await gw2.report(base + 2, 1)
        later = await gw2.next_sync()
        assert later.from_version == base + 2 and [c.id for c in later.upserts] == [a["id"]]
        assert later.deletes == [b["id"]]

        # Up to date and consistent: nothing. Up to date but with the wrong count: the full list.
        await gw2.report(latest, 1)
        await gw2.quiet()
        await gw2.report(latest, 7)
        full = await gw2.next_sync()
        assert full.full and [c.id for c in full.upserts] == [a["id"]]

        sync = (await e.http.get(f"/api/v1/sites/{SITE}/credential-sync")).json()
        by_id = {g["gateway_id"]: g for g in sync["gateways"]}
        assert by_id["gw-2"]["reported_count"] == 7 and by_id["gw-2"]["in_sync"] is False
        assert by_id["gw-1"]["in_sync"] is True


async def test_malformed_or_misaddressed_sync_state_is_rejected_and_counted(tmp_path: Path) -> None:
    async with estate(tmp_path, doors()) as e, fake_gateway(e) as gw2:
        metrics = e.app.state.services.metrics
        await gw2.client.publish(gw2.topics.sync, b"{not json", qos=1)
        other = SyncState(site_id=SITE, gateway_id="gw-9", version=0, credentials=0, at=utcnow())
        await gw2.client.publish(gw2.topics.sync, other.to_bytes(), qos=1)
        await until(
            lambda: metrics.rejected["malformed_json"] >= 1 and metrics.rejected["gateway_mismatch"] >= 1,
            5,
            "both rejections counted",
        )
        await gw2.quiet()
        await asyncio.sleep(0)
