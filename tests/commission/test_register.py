"""`steward commission register` against the real cloud on a real port: the credentials it writes (and
their file modes), the config the gateway will run with, and every way it refuses."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from cloud.auth import Role
from steward.broker import free_port
from steward.config import load_site_config
from tests.auth.support import App
from tests.commission.conftest import write_site
from tests.commission.support import BackgroundLoop, api, cli, cloud_url, reported, token_for

pytestmark = pytest.mark.timeout(120)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def register(config: Path, app_or_url: App | str, token: str, *extra: str) -> object:
    url = app_or_url if isinstance(app_or_url, str) else cloud_url(app_or_url)
    return cli(
        "register",
        "--config",
        str(config),
        "--cloud",
        url,
        *extra,
        env={"STEWARD_TOKEN": token, "STEWARD_INSTALLER": "Li Wei"},
    )


def test_register_writes_private_credentials_into_the_config(
    bg: BackgroundLoop, cloud: App, tmp_path: Path
) -> None:
    site = write_site(tmp_path, "elm-court", "gw-elm")
    before = site.read_text()
    token = token_for(bg, cloud, "ian", Role.INSTALLER, ["elm-court"])

    r = register(site, cloud, token)
    assert r.exit_code == 0, r.output
    assert "gateway gw-elm at site elm-court registered as gw-elm@elm-court" in r.stdout

    creds_file = tmp_path / "site.yaml.credentials.json"
    assert mode(creds_file) == 0o600 and mode(site) == 0o600
    creds = json.loads(creds_file.read_text())
    key = api(cloud, "GET", "/api/v1/auth/command-key", token).json()["public_key"]
    assert creds["broker_username"] == "gw-elm@elm-court" and creds["command_public_key"] == key
    assert (creds["cloud"], creds["registered_by"], creds["rotated"]) == (cloud_url(cloud), "Li Wei", False)
    assert token not in creds_file.read_text()  # the installer's token is never stored

    # The gateway's own loader sees the credentials in the fields it connects and verifies with.
    config = load_site_config(site)
    assert config.uplink.username == "gw-elm@elm-court"
    assert config.uplink.password is not None
    assert config.uplink.password.get_secret_value() == creds["broker_password"]
    assert config.uplink.command_public_key == key and config.uplink.topic_prefix == "steward"

    # Every line the installer wrote is still there, comments included; only uplink keys were added.
    after = site.read_text().splitlines()
    assert [line for line in after if line in before.splitlines()] == before.splitlines()
    added = [line for line in after if line not in before.splitlines()]
    assert [a.split(":")[0] for a in added] == [
        "  username",
        "  password",
        "  command_public_key",
        "  topic_prefix",
    ]

    # The log records the registration, never the password; the cloud lists the gateway.
    log = (tmp_path / "site.yaml.commissioning.json").read_text()
    assert creds["broker_password"] not in log and token not in log
    entry = json.loads(log)["entries"][-1]
    assert (entry["action"], entry["ok"], entry["broker_username"]) == ("register", True, "gw-elm@elm-court")
    gateways = api(cloud, "GET", "/api/v1/gateways", token, params={"site_id": "elm-court"}).json()["items"]
    assert [g["id"] for g in gateways] == ["gw-elm"]

    # Again without --force: refused, nothing touched. With --force: a new password, files still 0600.
    again = register(site, cloud, token)
    assert again.exit_code == 2
    assert "already has broker credentials" in again.stderr and "--force" in again.stderr
    assert json.loads(creds_file.read_text()) == creds
    forced = register(site, cloud, token, "--force", "--json")
    assert forced.exit_code == 0, forced.output
    assert json.loads(forced.stdout)["rotated"] is True
    assert "broker_password" not in forced.stdout
    new = json.loads(creds_file.read_text())
    assert new["broker_password"] != creds["broker_password"] and new["rotated"] is True
    assert mode(creds_file) == 0o600 and mode(site) == 0o600
    password = load_site_config(site).uplink.password
    assert password is not None and password.get_secret_value() == new["broker_password"]


def test_register_refuses_a_gateway_that_already_connected(
    bg: BackgroundLoop, cloud: App, tmp_path: Path
) -> None:
    # A gateway that has been talking to the cloud (here on the open test broker) is in use: a second
    # laptop without its credentials must not silently cut it off by rotating its password.
    reported(bg, cloud, "ash-row", "gw-ash")
    site = write_site(tmp_path, "ash-row", "gw-ash")
    token = token_for(bg, cloud, "ian-ash", Role.INSTALLER, ["ash-row"])
    r = register(site, cloud, token)
    assert r.exit_code == 2
    assert "has connected to it" in r.stderr and "--force" in r.stderr
    assert not (tmp_path / "site.yaml.credentials.json").exists()
    assert register(site, cloud, token, "--force").exit_code == 0


def test_register_bad_expired_and_foreign_tokens(bg: BackgroundLoop, cloud: App, tmp_path: Path) -> None:
    site = write_site(tmp_path, "fir-park", "gw-fir")
    before = site.read_text()

    r = register(site, cloud, "not-a-token")
    assert r.exit_code == 2
    assert "the cloud refused the token" in r.stderr and "expired" in r.stderr

    token = token_for(bg, cloud, "ian-fir", Role.INSTALLER, ["fir-park"])
    cloud.auth.clock.advance(cloud.auth.settings.access_token_ttl_s + 60)  # type: ignore[attr-defined]
    r = register(site, cloud, token)
    assert r.exit_code == 2 and "the cloud refused the token" in r.stderr

    other_site = token_for(bg, cloud, "ian-other", Role.INSTALLER, ["elsewhere"])
    r = register(site, cloud, other_site)
    assert r.exit_code == 2
    assert "not allowed" in r.stderr and "may not register_gateway at site 'fir-park'" in r.stderr
    viewer = token_for(bg, cloud, "vic-fir", Role.VIEWER, ["fir-park"])
    r = register(site, cloud, viewer)
    assert r.exit_code == 2 and "not allowed" in r.stderr

    # Nothing written, and each refusal is in the log for the report.
    assert site.read_text() == before
    assert not (tmp_path / "site.yaml.credentials.json").exists()
    entries = json.loads((tmp_path / "site.yaml.commissioning.json").read_text())["entries"]
    assert [(e["action"], e["ok"]) for e in entries] == [("register", False)] * 4


def test_register_gateway_id_taken_at_another_site(bg: BackgroundLoop, cloud: App, tmp_path: Path) -> None:
    admin = token_for(bg, cloud, "root-taken", Role.ADMIN, [])
    first = tmp_path / "a"
    first.mkdir()
    assert register(write_site(first, "oak-one", "gw-shared"), cloud, admin).exit_code == 0
    second = tmp_path / "b"
    second.mkdir()
    r = register(write_site(second, "oak-two", "gw-shared"), cloud, admin)
    assert r.exit_code == 2
    assert "refused (409)" in r.stderr and "registered at site 'oak-one'" in r.stderr
    assert not (second / "site.yaml.credentials.json").exists()


def test_register_names_device_ids_another_site_already_has(
    bg: BackgroundLoop, cloud: App, tmp_path: Path
) -> None:
    reported(bg, cloud, "elm-row", "gw-elm")  # another estate's gateway, with gate-1
    site = write_site(tmp_path, "yew-row", "gw-yew")
    modbus = "transport: {type: modbus_tcp, host: 127.0.0.1, port: 5020, unit: %d}"
    site.write_text(
        site.read_text().replace(
            "devices: []",
            f"devices:\n  - {{id: gate-1, kind: barrier_gate, {modbus % 1}}}\n"
            f"  - {{id: yew-gate-2, kind: barrier_gate, {modbus % 2}}}",
        )
    )
    token = token_for(bg, cloud, "ian-yew", Role.INSTALLER, ["yew-row"])
    r = register(site, cloud, token, "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["device_ids_taken"] == ["gate-1"]  # not yew-gate-2, and not whose
    assert "device_ids_taken" not in (tmp_path / "site.yaml.credentials.json").read_text()
    text = register(site, cloud, token, "--force")
    assert text.exit_code == 0 and "Device ids another site already has: gate-1." in text.stdout


def test_register_cloud_unreachable_and_bad_options(tmp_path: Path) -> None:
    site = write_site(tmp_path, "yew-lane", "gw-yew")
    before = site.read_text()

    r = register(site, f"http://127.0.0.1:{free_port()}", "some-token")
    assert r.exit_code == 1
    assert "cannot reach the cloud at http://127.0.0.1:" in r.stderr and "retry" in r.stderr

    r = register(site, "http://cloud.example.com", "some-token")
    assert r.exit_code == 2 and "plain http is only for a cloud on this machine" in r.stderr
    r = register(site, "ftp://127.0.0.1", "some-token")
    assert r.exit_code == 2 and "not a cloud address" in r.stderr
    r = cli("register", "--config", str(site), "--cloud", "http://127.0.0.1:1", env={"STEWARD_TOKEN": ""})
    assert r.exit_code == 2 and "--token (or STEWARD_TOKEN) is required" in r.stderr
    r = register(site, "http://127.0.0.1:1", "tok", "--broker-url", "http://nope")
    assert r.exit_code == 2 and "--broker-url" in r.stderr

    assert site.read_text() == before and mode(site) == 0o644
    assert not (tmp_path / "site.yaml.credentials.json").exists()
    assert "Traceback" not in r.output
