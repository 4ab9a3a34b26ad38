"""Gateway registration: credentials that really open an accounts-enforcing broker, rotation, scoping,
and `steward cloud broker-config` rendering them for Mosquitto."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cloud.auth import Role
from cloud.auth.registration import load_accounts
from protocol import Topics
from steward.broker import EmbeddedBroker
from steward.broker_auth import Access, BrokerAccounts
from steward.cli import app as cli
from steward.mqtt import MqttClient, MqttConnectError
from tests.auth.support import served
from tests.cloud.support import cloud_settings

SITE, GW = "oak-garden", "gw-7"


async def _connects(port: int, username: str, password: str) -> bool:
    # A gateway account may connect only under its own client ids (steward.broker_auth): its username.
    client = MqttClient("127.0.0.1", port, client_id=username, username=username, password=password)
    try:
        await client.connect(timeout=5)
    except MqttConnectError:
        return False
    await client.disconnect()
    return True


async def test_installer_registers_a_gateway_and_its_credentials_work(
    broker_port: int, sqlite_url: str, tmp_path: Path
) -> None:
    async with served(cloud_settings(broker_port, sqlite_url)) as c:
        ian = await c.user("ian", Role.INSTALLER, [SITE])
        body = {"site_id": SITE, "gateway_id": GW, "site_name": "Oak Garden"}
        first = await c.http.post("/api/v1/gateways/register", json=body, headers=ian)
        assert first.status_code == 201, first.text
        creds = first.json()
        key = (await c.http.get("/api/v1/auth/command-key", headers=ian)).json()
        assert creds["broker_username"] == f"{GW}@{SITE}"
        assert creds["command_public_key"] == key["public_key"]
        assert (creds["topic_prefix"], creds["rotated"]) == ("steward", False)
        gateways = (await c.http.get("/api/v1/gateways", headers=ian)).json()["items"]
        assert [(g["id"], g["site_id"], g["online"]) for g in gateways] == [(GW, SITE, False)]
        sites = (await c.http.get("/api/v1/sites", headers=ian)).json()["items"]
        assert [(s["id"], s["name"]) for s in sites] == [(SITE, "Oak Garden")]

        # The credentials open a broker that enforces the registered accounts, for this gateway's topics.
        accounts = load_accounts(c.settings)
        assert accounts is not None
        topics = Topics("steward", SITE, GW)
        async with EmbeddedBroker(port=0, accounts=accounts) as broker:
            assert not await _connects(broker.port, creds["broker_username"], "wrong")
            async with MqttClient(
                "127.0.0.1",
                broker.port,
                client_id=f"steward-gw-{GW}",  # what the edge uses
                username=creds["broker_username"],
                password=creds["broker_password"],
            ) as gw:
                await gw.subscribe(topics.commands)
                await gw.publish(topics.status, b"{}", qos=1)
            assert accounts.allows(creds["broker_username"], Access.PUBLISH, topics.events)
            assert not accounts.allows(creds["broker_username"], Access.PUBLISH, topics.commands)

        # Registering again rotates: the old password stops working, the new one works.
        again = (await c.http.post("/api/v1/gateways/register", json=body, headers=ian)).json()
        assert again["rotated"] is True
        assert again["broker_password"] != creds["broker_password"]
        rotated = load_accounts(c.settings)
        assert rotated is not None
        async with EmbeddedBroker(port=0, accounts=rotated) as broker:
            assert not await _connects(broker.port, creds["broker_username"], creds["broker_password"])
            assert await _connects(broker.port, again["broker_username"], again["broker_password"])


async def test_registration_is_scoped_and_role_checked(broker_port: int, sqlite_url: str) -> None:
    async with served(cloud_settings(broker_port, sqlite_url)) as c:
        ian = await c.user("ian", Role.INSTALLER, [SITE])
        olga = await c.user("olga", Role.OPERATOR, [SITE])
        other = {"site_id": "elm-court", "gateway_id": "gw-1"}
        refused = await c.http.post("/api/v1/gateways/register", json=other, headers=ian)
        assert refused.status_code == 403
        refused = await c.http.post(
            "/api/v1/gateways/register", json={"site_id": SITE, "gateway_id": "gw-1"}, headers=olga
        )
        assert refused.status_code == 403  # operators do not register gateways
        bad = await c.http.post(
            "/api/v1/gateways/register", json={"site_id": SITE, "gateway_id": "gw/#"}, headers=ian
        )
        assert bad.status_code == 422
        # An admin puts gw-1 at elm-court; the installer of oak-garden cannot take that id over.
        admin = await c.user("root", Role.ADMIN)
        assert (await c.http.post("/api/v1/gateways/register", json=other, headers=admin)).status_code == 201
        taken = await c.http.post(
            "/api/v1/gateways/register", json={"site_id": SITE, "gateway_id": "gw-1"}, headers=ian
        )
        assert taken.status_code == 403
        both = await c.user("ivy", Role.INSTALLER, [SITE, "elm-court"])
        clash = await c.http.post(
            "/api/v1/gateways/register", json={"site_id": SITE, "gateway_id": "gw-1"}, headers=both
        )
        assert (clash.status_code, clash.json()["error"]["code"]) == (409, "conflict")
        accounts = load_accounts(c.settings)
        assert accounts is not None
        assert [u.username for u in accounts.users if u.gateway_id] == ["gw-1@elm-court"]
        audit = (await c.http.get("/api/v1/auth/audit", headers=admin)).json()
        assert ("gateway_registered", "root", "elm-court") in {
            (a["action"], a["username"], a["site_id"]) for a in audit
        }


async def test_cloud_account_follows_the_configured_broker_password(
    broker_port: int, sqlite_url: str
) -> None:
    settings = cloud_settings(
        broker_port, sqlite_url, broker_username="steward-cloud", broker_password="cloud-secret-1234"
    )
    async with served(settings) as c:
        ian = await c.user("ian", Role.INSTALLER, [SITE])
        body = {"site_id": SITE, "gateway_id": GW}
        assert (await c.http.post("/api/v1/gateways/register", json=body, headers=ian)).status_code == 201
    accounts = load_accounts(settings)
    assert accounts is not None
    assert accounts.authenticate("steward-cloud", "cloud-secret-1234") is not None


def test_broker_config_cli_writes_mosquitto_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cloud.auth.registration import provision_gateway
    from cloud.settings import CloudSettings

    db = f"sqlite+aiosqlite:///{tmp_path / 'cloud.db'}"
    settings = CloudSettings(database_url=db)
    user, password, _ = provision_gateway(settings, SITE, GW)
    provision_gateway(settings, "elm-court", "gw-1")
    monkeypatch.delenv("STEWARD_CLOUD_BROKER_PASSWORD", raising=False)
    out = tmp_path / "mosquitto"
    result = CliRunner().invoke(
        cli,
        [
            "cloud",
            "broker-config",
            "--out",
            str(out),
            "--database-url",
            db,
            "--rotate-cloud",
            "--port",
            "8884",
            "--cloud-port",
            "1884",
            "--cloud-bind",
            "127.0.0.2",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "cloud + 2 gateway(s)" in result.output
    cloud_password = result.output.split("password: ", 1)[1].split()[0]
    conf = (out / "mosquitto.conf").read_text()
    assert "allow_anonymous false" in conf and "listener 8884" in conf
    assert "listener 1884 127.0.0.2" in conf
    acl = (out / "acl").read_text()
    assert (
        f"user {user}\ntopic read steward/v1/{SITE}/{GW}/down/#\ntopic write steward/v1/{SITE}/{GW}/up/#"
        in acl
    )
    assert "user gw-1@elm-court" in acl and "user steward-cloud" in acl
    passwd = (out / "passwd").read_text()
    assert {line.split(":")[0] for line in passwd.splitlines()} == {"steward-cloud", user, "gw-1@elm-court"}
    assert (out / "passwd").stat().st_mode & 0o077 == 0
    accounts = BrokerAccounts.load(tmp_path / "broker-accounts.json")
    assert accounts.authenticate(user, password) is not None  # gateways keep their passwords
    assert accounts.authenticate("steward-cloud", cloud_password) is not None
    clash = CliRunner().invoke(
        cli, ["cloud", "broker-config", "--out", str(out), "--database-url", db, "--cloud-port", "8883"]
    )
    assert clash.exit_code == 2 and "is the gateways' listener too" in clash.output
