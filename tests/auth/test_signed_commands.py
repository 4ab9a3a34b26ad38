"""The cloud signs every command; gateways holding its public key run the cloud's commands and refuse
forged ones -- on a real broker that enforces the accounts registration issued."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta
from pathlib import Path

from cloud.auth import Role
from cloud.auth.registration import load_accounts
from edge.verify import make_verifier
from protocol import Command, CommandResult, Topics, new_id
from protocol.models import utcnow
from protocol.signing import generate_private_key, sign_command
from steward.broker import EmbeddedBroker, free_port
from steward.mqtt import MqttClient
from tests.auth.support import served
from tests.cloud.support import FakeGateway, cloud_settings, eventually
from tests.stack import site_config

SITE, GW, GATE = "oak-garden", "gw-1", "east-gate"


async def test_commands_carry_a_signature_that_verifies(broker_port: int, sqlite_url: str) -> None:
    async with served(cloud_settings(broker_port, sqlite_url)) as c, FakeGateway(broker_port) as gw:
        admin = await c.user("root", Role.ADMIN)
        await gw.send_status(online=True)
        await eventually(lambda: _has(c.http, "/api/v1/devices/gate-1", admin))
        key = (await c.http.get("/api/v1/auth/command-key", headers=admin)).json()["public_key"]
        resp = await c.http.post("/api/v1/devices/gate-1/commands", json={"action": "open"}, headers=admin)
        assert resp.status_code == 202
        wire = await gw.next_command()
        verify = make_verifier(key, site_id="estate-a")
        assert verify(wire) is None
        tampered = wire.model_copy(update={"device_id": "door-1"})
        assert "bad signature" in (verify(tampered) or "")
        assert "bad signature" in (make_verifier(key)(sign_command(wire, generate_private_key())) or "")
    # The key survives restarts: same file, same public key.
    async with served(cloud_settings(broker_port, sqlite_url)) as c:
        admin = await c.user("root2", Role.ADMIN)
        assert (await c.http.get("/api/v1/auth/command-key", headers=admin)).json()["public_key"] == key
        assert (
            Path(sqlite_url.split("///")[1]).parent / "command-signing.pem"
        ).stat().st_mode & 0o777 == 0o600


async def _has(http: object, path: str, headers: dict[str, str]) -> bool:
    return (await http.get(path, headers=headers)).status_code == 200  # type: ignore[attr-defined]


def _gate(port: int) -> dict[str, object]:
    return {
        "id": GATE,
        "kind": "barrier_gate",
        "transport": {"type": "modbus_tcp", "host": "127.0.0.1", "port": port, "unit": 1, "timeout_s": 0.5},
        "poll_interval_s": 0.1,
    }


async def test_registered_gateway_runs_signed_commands_and_refuses_forged_ones(
    broker_port: int, sqlite_url: str, tmp_path: Path
) -> None:
    from edge.gateway import Gateway
    from simulators.registry import run_site_simulators

    cloud_password = "cloud-broker-password-1"
    settings = cloud_settings(
        broker_port, sqlite_url, broker_username="steward-cloud", broker_password=cloud_password
    )
    # 1. An installer registers the gateway (the cloud still on the open test broker).
    async with served(settings) as c:
        ian = await c.user("ian", Role.INSTALLER, [SITE])
        reg = await c.http.post(
            "/api/v1/gateways/register", json={"site_id": SITE, "gateway_id": GW}, headers=ian
        )
        assert reg.status_code == 201, reg.text
        creds = reg.json()
    accounts = load_accounts(settings)
    assert accounts is not None

    # 2. The site's broker now enforces those accounts; cloud and gateway log in with theirs.
    async with EmbeddedBroker(port=0, accounts=accounts) as broker:
        settings = settings.model_copy(update={"broker_port": broker.port, "http_port": free_port()})
        site = site_config(
            tmp_path,
            broker.port,
            [_gate(free_port())],
            site_id=SITE,
            gateway_id=GW,
            uplink={
                "broker_url": broker.url,
                "username": creds["broker_username"],
                "password": creds["broker_password"],
                "command_public_key": creds["command_public_key"],
            },
        )
        async with served(settings) as c, run_site_simulators(site, travel_time_s=0.2) as sims:
            gateway = Gateway(site)
            task = asyncio.create_task(gateway.run())
            try:
                async with asyncio.timeout(20):
                    await gateway.started.wait()
                admin = await c.user("root", Role.ADMIN)
                await eventually(lambda: _has(c.http, f"/api/v1/devices/{GATE}", admin), timeout=15)
                gate = sims[GATE]

                # Someone holding the cloud's *broker* password, but not its signing key.
                topics = Topics("steward", SITE, GW)
                async with MqttClient(
                    "127.0.0.1",
                    broker.port,
                    client_id="intruder",
                    username="steward-cloud",
                    password=cloud_password,
                ) as intruder:
                    await intruder.subscribe(topics.results)
                    now = utcnow()
                    forged = Command(
                        id=new_id(),
                        site_id=SITE,
                        gateway_id=GW,
                        device_id=GATE,
                        action="open",
                        issued_at=now,
                        expires_at=now + timedelta(seconds=30),
                        issued_by="root",
                    )
                    for cmd in (
                        forged,
                        sign_command(forged.model_copy(update={"id": new_id()}), generate_private_key()),
                    ):
                        await intruder.publish(topics.commands, cmd.to_bytes(), qos=1)
                        result = await _result_for(intruder, cmd.id)
                        assert result.status.value == "rejected", result
                        assert "signature" in (result.reason or "")
                await asyncio.sleep(0.3)
                assert gate.state()["state"] == "closed"  # the forged commands moved nothing

                # The cloud's own, signed command runs.
                resp = await c.http.post(
                    f"/api/v1/devices/{GATE}/commands", json={"action": "open"}, headers=admin
                )
                assert resp.status_code == 202, resp.text
                done = await c.http.get(
                    f"/api/v1/commands/{resp.json()['id']}", params={"wait": 10}, headers=admin
                )
                body = done.json()
                if body["status"] == "accepted":
                    body = (
                        await c.http.get(
                            f"/api/v1/commands/{body['id']}",
                            params={"wait": 10, "seen": "accepted"},
                            headers=admin,
                        )
                    ).json()
                assert body["status"] == "succeeded", body
                assert gate.state()["state"] == "open"
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task


async def _result_for(client: MqttClient, command_id: str) -> CommandResult:
    async with asyncio.timeout(10):
        while True:
            msg = await client.get_message()
            if not msg.topic.endswith("/up/results"):
                continue
            result = CommandResult.model_validate_json(msg.payload)
            if result.command_id == command_id:
                return result
