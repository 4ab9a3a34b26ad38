"""The Mosquitto files generated from BrokerAccounts, checked against the real mosquitto tools."""

from __future__ import annotations

import asyncio
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from protocol.topics import Topics
from steward.broker_auth import (
    BrokerAccounts,
    BrokerUser,
    Role,
    check_password,
    gateway_username,
    hash_password,
    provision,
)
from steward.mosquitto import (
    MosquittoProcess,
    ServerTls,
    acl_file_text,
    mosquitto_conf_text,
    password_file_text,
    write_broker_config,
)
from steward.mqtt import MqttClient, MqttConnectError
from tests.security import needs_mosquitto, until_topic

GW = gateway_username("oak-garden", "gw-1")


def test_hash_format_is_mosquitto_pbkdf2() -> None:
    h = hash_password("s3cret", iterations=101, salt=b"0123456789ab")
    assert h.startswith("$7$101$MDEyMzQ1Njc4OWFi$")
    assert check_password("s3cret", h)
    assert not check_password("s3cret!", h)
    assert not check_password("s3cret", "$6$abc$def")  # sha512-crypt is not accepted
    assert not check_password("s3cret", "plain")


@pytest.mark.skipif(shutil.which("mosquitto_passwd") is None, reason="mosquitto_passwd not installed")
def test_hashes_written_by_mosquitto_passwd_verify(tmp_path: Path) -> None:
    pw_file = tmp_path / "pw"
    subprocess.run(
        ["mosquitto_passwd", "-c", "-b", str(pw_file), "alice", "correct horse"], check=True, timeout=10
    )
    username, theirs = pw_file.read_text().strip().split(":", 1)
    assert username == "alice" and theirs.startswith("$7$")
    assert check_password("correct horse", theirs)
    assert not check_password("correct horse battery", theirs)


def test_acl_file_text() -> None:
    h = hash_password("x")
    accounts = BrokerAccounts(
        users=[
            BrokerUser(
                username=GW, password_hash=h, role=Role.GATEWAY, site_id="oak-garden", gateway_id="gw-1"
            ),
            BrokerUser(username="steward-cloud", password_hash=h, role=Role.CLOUD),
        ]
    )
    lines = [ln for ln in acl_file_text(accounts).splitlines() if ln and not ln.startswith("#")]
    assert lines == [
        "user steward-cloud",
        "topic read steward/v1/+/+/up/#",
        "topic read steward/cloud/fanout",
        "topic write steward/v1/+/+/down/#",
        "topic write steward/cloud/fanout",
        "user gw-1@oak-garden",
        "topic read steward/v1/oak-garden/gw-1/down/#",
        "topic write steward/v1/oak-garden/gw-1/up/#",
    ]
    assert password_file_text(accounts) == f"{GW}:{h}\nsteward-cloud:{h}\n"


def test_conf_refuses_anonymous_and_sets_nodelay_and_tls(tmp_path: Path) -> None:
    tls = ServerTls(tmp_path / "ca.crt", tmp_path / "s.crt", tmp_path / "s.key", require_certificate=True)
    conf = mosquitto_conf_text(
        password_file=tmp_path / "p",
        acl_file=tmp_path / "a",
        port=8883,
        tls=tls,
        cloud_password_file=tmp_path / "c",
    )
    lines = [ln for ln in conf.splitlines() if ln and not ln.startswith("#")]
    gateway = lines[lines.index("listener 8883") : lines.index("listener 1883 127.0.0.1")]
    cloud = lines[lines.index("listener 1883 127.0.0.1") : lines.index("persistence false")]
    assert "per_listener_settings true" in lines[: lines.index("listener 8883")]
    for expected in [
        "allow_anonymous false",
        f"password_file {tmp_path / 'p'}",
        f"acl_file {tmp_path / 'a'}",
        "use_username_as_clientid true",  # a gateway cannot connect under another's client id
        "set_tcp_nodelay true",
        "require_certificate true",
        "tls_version tlsv1.2",
        f"cafile {tmp_path / 'ca.crt'}",
    ]:
        assert expected in gateway
    # The cloud's listener: its own password file, client ids as sent (cloud instances share the account).
    assert cloud == [
        "listener 1883 127.0.0.1",
        "allow_anonymous false",
        f"password_file {tmp_path / 'c'}",
        f"acl_file {tmp_path / 'a'}",
        "set_tcp_nodelay true",
    ]


def test_written_files_are_private_and_round_trip(tmp_path: Path) -> None:
    prov = provision([("oak-garden", "gw-1")])
    files = write_broker_config(prov.accounts, tmp_path / "broker")
    for path in (files.conf, files.password_file, files.acl_file, files.cloud_password_file):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [ln.split(":")[0] for ln in files.cloud_password_file.read_text().splitlines()] == [
        "steward-cloud"
    ]
    saved = prov.accounts.save(tmp_path / "accounts.json")
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert BrokerAccounts.load(saved) == prov.accounts
    assert "password" not in saved.read_text().replace("password_hash", "")  # no plain passwords


def test_provision_keeps_rotates_and_removes() -> None:
    first = provision([("oak-garden", "gw-1"), ("oak-garden", "gw-2")])
    assert set(first.passwords) == {"steward-cloud", GW, "gw-2@oak-garden"}

    again = provision([("oak-garden", "gw-1"), ("elm", "gw-1")], existing=first.accounts, rotate=[GW])
    assert set(again.passwords) == {GW, "gw-1@elm"}  # cloud kept its password; gw-1 rotated; elm new
    assert again.removed == ("gw-2@oak-garden",)
    assert again.accounts.get("steward-cloud") == first.accounts.get("steward-cloud")
    old_gw, new_gw = first.accounts.get(GW), again.accounts.get(GW)
    assert old_gw is not None and new_gw is not None
    assert check_password(again.passwords[GW], new_gw.password_hash)
    assert not check_password(first.passwords[GW], new_gw.password_hash)


@needs_mosquitto
async def test_mosquitto_accepts_our_hashes_and_reload_applies_rotation_and_removal(tmp_path: Path) -> None:
    first = provision([("oak-garden", "gw-1"), ("oak-garden", "gw-2")], iterations=20_000)
    gw2 = "gw-2@oak-garden"
    async with MosquittoProcess(tmp_path / "m", first.accounts) as m:

        def client(user: str, password: str) -> MqttClient:
            return MqttClient(m.host, m.port, client_id=f"c-{user}", username=user, password=password)

        async with client(GW, first.passwords[GW]):
            pass  # our hashes work, including a higher iteration count than mosquitto_passwd's
        connected_gw2 = client(gw2, first.passwords[gw2])
        await connected_gw2.connect(timeout=5)

        second = provision([("oak-garden", "gw-1")], existing=first.accounts, rotate=[GW])
        m.accounts = second.accounts
        await m.reload()  # SIGHUP: Mosquitto rereads the password and ACL files
        try:
            # Mosquitto re-checks connected clients on reload: the removed gateway is thrown out.
            async with asyncio.timeout(5):
                await connected_gw2.wait_disconnected()
        finally:
            await connected_gw2.disconnect()

        async def refused(user: str, password: str) -> bool:
            c = client(user, password)
            try:
                await c.connect(timeout=2)
            except MqttConnectError:
                return True
            await c.disconnect()
            return False

        # The reload is asynchronous; wait (bounded) until the old password stops working.
        async with asyncio.timeout(10):
            while True:
                if await refused(GW, first.passwords[GW]):
                    break
                await asyncio.sleep(0.1)
        assert await refused(gw2, first.passwords[gw2])  # removed gateway is out
        async with (
            client(GW, second.passwords[GW]) as gw,
            client("steward-cloud", first.passwords["steward-cloud"]) as cloud,
        ):
            topics = Topics("steward", "oak-garden", "gw-1")
            await cloud.subscribe(Topics.cloud_uplink_filter("steward"))
            await gw.publish(topics.events, b"after rotation")
            assert [x.payload for x in await until_topic(cloud, topics.events)] == [b"after rotation"]


@needs_mosquitto
async def test_cloud_listener_takes_the_cloud_account_only_and_keeps_its_client_ids(tmp_path: Path) -> None:
    """Gateways cannot use the cloud's listener (where client ids are not replaced) to take over an id;
    cloud instances there keep the ids they send, so two of them do not kick each other off."""
    prov = provision([("oak-garden", "gw-1")])
    async with MosquittoProcess(tmp_path / "m", prov.accounts) as m:
        gw_on_cloud_listener = MqttClient(
            m.host, m.cloud_port, client_id="steward-gw-gw-1", username=GW, password=prov.passwords[GW]
        )
        with pytest.raises(MqttConnectError, match="refused"):
            await gw_on_cloud_listener.connect(timeout=2)

        def cloud(client_id: str) -> MqttClient:
            return MqttClient(
                m.host,
                m.cloud_port,
                client_id=client_id,
                username="steward-cloud",
                password=prov.passwords["steward-cloud"],
            )

        topics = Topics("steward", "oak-garden", "gw-1")
        async with (
            cloud("cloud-a") as a,
            cloud("cloud-b") as b,
            MqttClient(m.host, m.port, client_id="x", username=GW, password=prov.passwords[GW]) as gw,
        ):
            for c in (a, b):
                await c.subscribe(Topics.cloud_uplink_filter("steward"))
            await gw.publish(topics.events, b"to both")
            for c in (a, b):
                assert [x.payload for x in await until_topic(c, topics.events)] == [b"to both"]
            assert a.is_connected and b.is_connected
