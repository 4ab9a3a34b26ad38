"""The live stream across cloud instances (cloud/fanout.py): a console streaming from one instance sees
the events another ingested and the commands another issued; what arrives on the fan-out topic is
checked before it reaches a console, and an instance's own messages are not shown twice."""

from __future__ import annotations

import asyncio
import contextlib
import json
import tempfile
from pathlib import Path
from typing import Any

import httpx
from pydantic import ValidationError

from cloud.fanout import FanoutBatch
from protocol import CommandStatus, new_id
from protocol.topics import cloud_fanout_topic
from steward.mqtt import MqttClient
from tests.cloud.conftest import PG_URL, requires_mosquitto, requires_pg
from tests.cloud.support import (
    FakeGateway,
    cloud_settings,
    eventually,
    make_batch,
    make_event,
    metric,
    running_cloud,
    streaming,
)


async def _fanout_ready(http: httpx.AsyncClient) -> bool:
    return await metric(http, "steward_cloud_fanout_ready") == 1


async def _peers_listening(http: httpx.AsyncClient, expected: int) -> bool:
    return await metric(http, "steward_cloud_fanout_peers_listening") == expected


async def _has_device(http: httpx.AsyncClient, device_id: str) -> bool:
    return (await http.get(f"/api/v1/devices/{device_id}")).status_code == 200


def _ids(got: list[tuple[str, dict[str, Any]]], kind: str) -> list[Any]:
    return [d.get("id") for k, d in got if k == kind]


@requires_pg
@requires_mosquitto
async def test_a_console_on_one_instance_sees_what_another_ingested_and_issued() -> None:
    prefix = f"t{new_id().lower()}"
    state = Path(tempfile.mkdtemp(prefix="steward-fanout-"))
    common: dict[str, Any] = {
        "database_schema": f"t_{new_id().lower()}",
        "topic_prefix": prefix,
        "shared_subscription": True,  # fan-out follows it by default
        "command_signing_key_file": state / "command-signing.pem",
        "broker_accounts_file": state / "broker-accounts.json",
    }
    a = cloud_settings(1883, PG_URL, client_id=f"cloud-a-{prefix[-6:]}", **common)
    async with running_cloud(a) as cloud_a:
        b = cloud_settings(1883, PG_URL, client_id=f"cloud-b-{prefix[-6:]}", **common)
        async with running_cloud(b) as cloud_b, FakeGateway(1883, prefix=prefix) as gw:
            await eventually(lambda: _fanout_ready(cloud_a.http))
            await eventually(lambda: _fanout_ready(cloud_b.http))
            await gw.send_status(online=True)
            await eventually(lambda: _has_device(cloud_b.http, "gate-1"))
            async with streaming(cloud_b.http, kinds="event,command") as stream:
                # A sends its events once B has said that a stream is open there.
                await eventually(lambda: _peers_listening(cloud_a.http, 1))
                batches = [
                    make_batch([make_event("meter-1", "meter.reading", seq, {"kwh": seq})])
                    for seq in range(1, 13)
                ]
                for batch in batches:
                    await gw.send_batch(batch)
                for _ in batches:
                    await gw.next_ack()
                sent = {batch.events[0].id for batch in batches}
                got = await stream.until(lambda got: sent <= set(_ids(got, "event")), timeout=10)
                # The shared subscription gave A some of them: without the fan-out B never saw those.
                assert await metric(cloud_a.http, "steward_cloud_batches_total") > 0
                assert sorted(_ids(got, "event")) == sorted(sent)  # each once, none twice

                # Issued on A: its "sent" exists on A's hub alone; the result lands on either.
                r = await cloud_a.http.post("/api/v1/devices/gate-1/commands", json={"action": "close"})
                assert r.status_code == 202, r.text
                cmd = r.json()
                await gw.answer(await gw.next_command(), CommandStatus.SUCCEEDED)

                def statuses(got: list[tuple[str, dict[str, Any]]]) -> list[str]:
                    return [d["status"] for k, d in got if k == "command" and d["id"] == cmd["id"]]

                got = await stream.until(lambda got: "succeeded" in statuses(got))
                assert statuses(got) == ["sent", "succeeded"]
            assert await metric(cloud_b.http, 'steward_cloud_fanout_messages_total{outcome="received"}') > 0


async def test_messages_on_the_fanout_topic_are_checked_and_ones_own_not_shown_twice(
    broker_port: int, sqlite_url: str
) -> None:
    settings = cloud_settings(broker_port, sqlite_url, fanout=True)
    topic = cloud_fanout_topic(settings.topic_prefix)

    def batch(instance: str, *messages: dict[str, Any], listeners: int = 0) -> bytes:
        body = {"v": 1, "instance": instance, "listeners": listeners, "messages": list(messages)}
        return json.dumps(body).encode()

    def event(event_id: str) -> dict[str, Any]:
        return {"kind": "event", "data": {"id": event_id, "site_id": "estate-a", "type": "gate.opened"}}

    async with (
        running_cloud(settings) as cloud,
        MqttClient("127.0.0.1", broker_port, client_id="cloud-other") as other,
        FakeGateway(broker_port) as gw,
    ):
        await eventually(lambda: _fanout_ready(cloud.http))
        await other.subscribe(topic)
        async with streaming(cloud.http, kinds="event") as stream:
            published = (
                b"not json",
                batch("cloud-other", {"kind": "command", "data": {"status": "succeeded"}}),  # no id
                batch("cloud-other", {"kind": "shutdown", "data": {}}),
                batch(settings.client_id, event("looped-back")),  # as if our own came back again
                batch("cloud-other", event("from-another-instance")),
            )
            for payload in published:
                await other.publish(topic, payload, qos=0)
            got = await stream.until(lambda got: "from-another-instance" in _ids(got, "event"))
            assert _ids(got, "event") == ["from-another-instance"]
            assert await metric(cloud.http, 'steward_cloud_fanout_messages_total{outcome="refused"}') == 3
            assert await metric(cloud.http, 'steward_cloud_fanout_messages_total{outcome="received"}') == 1

            # The other way. Events go only to instances that have said a stream is open there: this
            # one is stored while "other" has said nothing, so it never leaves.
            unseen = make_batch([make_event("gate-1", "gate.closed", 1)])
            await gw.send_batch(unseen)
            await stream.until(lambda got: unseen.events[0].id in _ids(got, "event"))
            presence = batch("cloud-other", listeners=1)
            published += (presence,)
            await other.publish(topic, presence, qos=0)
            await eventually(lambda: _peers_listening(cloud.http, 1))
            # A stored batch's events leave together, in one message.
            stored = make_batch([make_event("gate-1", "gate.opened", seq) for seq in (2, 3, 4)])
            await gw.send_batch(stored)
            ours: list[FanoutBatch] = []
            async with asyncio.timeout(5):
                while not ours:
                    msg = await other.get_message()
                    if msg.payload in published:
                        continue  # what "other" sent, above, back from the broker
                    with contextlib.suppress(ValidationError):
                        parsed = FanoutBatch.model_validate_json(msg.payload)
                        if parsed.instance == settings.client_id and parsed.messages:
                            ours.append(parsed)
            assert [(m.kind, m.data["id"]) for m in ours[0].messages] == [
                ("event", e.id) for e in stored.events
            ]
            # This instance's own stream had them once, from its hub, not again from the broker.
            last = make_batch([make_event("gate-1", "gate.closed", 5)])
            await gw.send_batch(last)
            got = await stream.until(lambda got: last.events[0].id in _ids(got, "event"))
            assert _ids(got, "event")[1:] == [e.id for b in (unseen, stored, last) for e in b.events]


async def test_an_estates_events_go_to_another_instance_only_while_a_stream_there_reads_it(
    broker_port: int, sqlite_url: str
) -> None:
    settings = cloud_settings(broker_port, sqlite_url, fanout=True)
    topic = cloud_fanout_topic(settings.topic_prefix)

    def said(instance: str, *messages: dict[str, Any], **fields: Any) -> bytes:
        body = {"v": 2, "instance": instance, "listeners": 1, "messages": list(messages), **fields}
        return json.dumps(body).encode()

    def marker(n: int) -> dict[str, Any]:
        return {"kind": "event", "data": {"id": f"marker-{n}", "site_id": "estate-x", "type": "gate.opened"}}

    async with (
        running_cloud(settings) as cloud,
        MqttClient("127.0.0.1", broker_port, client_id="cloud-other") as other,
        FakeGateway(broker_port) as gw_a,
        FakeGateway(broker_port, site="estate-c", gateway="gw-3") as gw_c,
        streaming(cloud.http, kinds="event") as stream,
    ):
        await eventually(lambda: _fanout_ready(cloud.http))
        await other.subscribe(topic)

        async def tell(n: int, instance: str = "cloud-other", **fields: Any) -> None:
            # Every message says where its sender's streams are. The instance handles one sender's
            # messages in order: once the marker is on this instance's stream, the presence was taken in.
            await other.publish(topic, said(instance, marker(n), **fields), qos=0)
            await stream.until(lambda got: f"marker-{n}" in _ids(got, "event"))

        async def stored(gw: FakeGateway, seq: int) -> str:
            batch = make_batch([make_event("gate-1", "gate.opened", seq)], site=gw.site, gateway=gw.gateway)
            await gw.send_batch(batch)
            await stream.until(lambda got: batch.events[0].id in _ids(got, "event"))
            return batch.events[0].id  # its hub has published it: whether it was forwarded is decided

        async def forwarded_until(event_id: str) -> list[str]:
            seen: list[str] = []
            async with asyncio.timeout(5):
                while event_id not in seen:
                    with contextlib.suppress(ValidationError):
                        parsed = FanoutBatch.model_validate_json((await other.get_message()).payload)
                        if parsed.instance == settings.client_id:
                            seen += [m.data["id"] for m in parsed.messages if m.kind == "event"]
            return seen

        # A console there on estate-b: estate-a's events stay here.
        await tell(1, sites=["estate-b"])
        unwatched = await stored(gw_a, 1)
        # Then one opens estate-a.
        await tell(2, sites=["estate-a"])
        watched = await stored(gw_a, 2)
        forwarded = await forwarded_until(watched)
        assert unwatched not in forwarded

        # estate-c: nobody reads it, until an instance of version 1 says it has a stream open (it means
        # every estate) and a later version's field this one does not know is ignored, not refused.
        before = await stored(gw_c, 3)
        await tell(3, instance="cloud-old", v=1)
        await tell(4, sites=[], shards=[1, 2])
        after = await stored(gw_c, 4)
        forwarded = await forwarded_until(after)
        assert before not in forwarded
        assert await metric(cloud.http, "steward_cloud_fanout_peers_listening") == 2
        assert await metric(cloud.http, 'steward_cloud_fanout_messages_total{outcome="refused"}') == 0


async def test_an_instance_says_which_estates_its_streams_read(broker_port: int, sqlite_url: str) -> None:
    settings = cloud_settings(broker_port, sqlite_url, fanout=True)
    topic = cloud_fanout_topic(settings.topic_prefix)
    async with (
        running_cloud(settings) as cloud,
        MqttClient("127.0.0.1", broker_port, client_id="cloud-other") as other,
    ):
        await eventually(lambda: _fanout_ready(cloud.http))
        await other.subscribe(topic)

        async def presence(done: Any) -> FanoutBatch:
            # Said at once when a stream opens or closes, and every 5 s while any is open.
            async with asyncio.timeout(10):
                while True:
                    with contextlib.suppress(ValidationError):
                        said = FanoutBatch.model_validate_json((await other.get_message()).payload)
                        if said.instance == settings.client_id and done(said):
                            return said

        async with streaming(cloud.http, kinds="event,command", site_id="estate-a"):
            said = await presence(lambda b: b.listeners == 1)
            assert (said.v, said.sites) == (2, ["estate-a"])
            async with streaming(cloud.http, kinds="gateway"):  # an estate list: no events
                said = await presence(lambda b: b.listeners == 2)
                assert said.sites == ["estate-a"]
                async with streaming(cloud.http, kinds="event"):  # every estate's
                    said = await presence(lambda b: b.listeners == 3)
                    assert said.sites is None
        said = await presence(lambda b: b.listeners == 0)  # the last one closed: said once more
        assert said.sites == []
