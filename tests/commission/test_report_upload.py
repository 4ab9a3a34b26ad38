"""`steward commission report --upload` and ``/api/v1/gateways/{id}/commissioning`` on the real cloud:
who may upload and read, what is refused (size, shape, the wrong gateway), that the local report is
always kept, and that the migration creates the table as declared."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, inspect

from cloud.auth import Role
from cloud.commissioning import MAX_REPORT_BYTES
from cloud.commissioning.tables import CommissioningReportRow
from cloud.db import make_engine, upgrade
from cloud.settings import CloudSettings
from protocol import DeviceInfo
from steward.broker import free_port
from tests.auth.support import App
from tests.commission.conftest import write_site
from tests.commission.support import BackgroundLoop, api, cli, cloud_url, reported, token_for

pytestmark = pytest.mark.timeout(120)
GATE = (
    "  - {id: gate-1, kind: barrier_gate, model: io-module,"
    " transport: {type: modbus_tcp, host: 127.0.0.1, unit: 6}}\n"
)


def registered_site(bg: BackgroundLoop, cloud: App, tmp_path: Path, site: str, gw: str) -> tuple[Path, str]:
    path = write_site(tmp_path, site, gw)
    path.write_text(path.read_text().replace("devices: []\n", "devices:\n" + GATE), encoding="utf-8")
    token = token_for(bg, cloud, f"ian-{site}", Role.INSTALLER, [site])
    r = cli("register", "--config", str(path), "--cloud", cloud_url(cloud), env={"STEWARD_TOKEN": token})
    assert r.exit_code == 0, r.output
    return path, token


def report(config: Path, *extra: str, token: str | None = None) -> Any:
    env = {"STEWARD_INSTALLER": "Li Wei", **({"STEWARD_TOKEN": token} if token else {})}
    return cli("report", "--config", str(config), *extra, env=env)


def test_report_uploads_to_the_cloud_it_registered_with(
    bg: BackgroundLoop, cloud: App, tmp_path: Path
) -> None:
    site, token = registered_site(bg, cloud, tmp_path, "pine-hill", "gw-pine")

    # --upload without --cloud: the cloud recorded by `register`; the token from STEWARD_TOKEN.
    r = report(site, "--upload", token=token)
    assert r.exit_code == 0, r.output
    assert "Report written:" in r.stdout and "Uploaded: uploaded to" in r.stdout
    local = json.loads((tmp_path / "site.commissioning-report.json").read_text())
    assert local["registered"]["broker_username"] == "gw-pine@pine-hill"
    md = (tmp_path / "site.commissioning-report.md").read_text()
    assert "Cloud registration: ✅ `gw-pine@pine-hill`" in md

    viewer = token_for(bg, cloud, "vic-pine", Role.VIEWER, ["pine-hill"])
    got = api(cloud, "GET", "/api/v1/gateways/gw-pine/commissioning", viewer)
    assert got.status_code == 200, got.text
    body = got.json()
    latest = body["latest"]
    assert (body["site_id"], latest["uploaded_by"], latest["installer"]) == (
        "pine-hill",
        "ian-pine-hill",
        "Li Wei",
    )
    assert (latest["devices"], latest["devices_complete"], latest["complete"]) == (1, 0, False)
    assert latest["report"]["devices"][0]["id"] == "gate-1"
    assert latest["report"]["devices"][0]["missing"] == ["probe", "action test"]
    assert latest["report"]["registered"]["broker_username"] == "gw-pine@pine-hill"

    # A second upload becomes the latest; the first stays in the history.
    r = report(site, "--cloud", cloud_url(cloud), token=token)
    assert r.exit_code == 0, r.output
    body = api(cloud, "GET", "/api/v1/gateways/gw-pine/commissioning", viewer).json()
    assert [h["id"] for h in body["history"]] == [body["latest"]["id"], latest["id"]]
    assert body["latest"]["id"] > latest["id"]
    limited = api(cloud, "GET", "/api/v1/gateways/gw-pine/commissioning?history=1", viewer).json()
    assert len(limited["history"]) == 1

    # Without a token it stays local; --no-upload ignores the token.
    assert report(site, "--no-upload", token=token).exit_code == 0
    r = report(site, "--upload")
    assert r.exit_code == 2 and "--token (or STEWARD_TOKEN) is required" in r.stderr
    assert "Report written" in r.stdout
    assert len(api(cloud, "GET", "/api/v1/gateways/gw-pine/commissioning", viewer).json()["history"]) == 2

    # The uploads are in the log and in the auth audit trail.
    actions = [
        e["action"] for e in json.loads((tmp_path / "site.yaml.commissioning.json").read_text())["entries"]
    ]
    assert actions.count("upload_report") == 2
    admin = token_for(bg, cloud, "root-pine", Role.ADMIN, [])
    audit = api(cloud, "GET", "/api/v1/auth/audit", admin, params={"username": "ian-pine-hill"}).json()
    assert [a["action"] for a in audit].count("commissioning_uploaded") == 2


def test_report_upload_failures_keep_the_local_report(bg: BackgroundLoop, cloud: App, tmp_path: Path) -> None:
    site = write_site(tmp_path, "box-wood", "gw-box")
    token = token_for(bg, cloud, "ian-box", Role.INSTALLER, ["box-wood"])
    json_path = tmp_path / "site.commissioning-report.json"

    r = report(site, "--cloud", cloud_url(cloud), token=token)  # never registered
    assert r.exit_code == 2
    assert "report saved locally, not uploaded" in r.stderr and "register it first" in r.stderr
    assert json_path.exists()

    json_path.unlink()
    r = report(site, "--cloud", f"http://127.0.0.1:{free_port()}", token=token)
    assert r.exit_code == 1
    assert "report saved locally, not uploaded" in r.stderr and "cannot reach the cloud" in r.stderr
    assert json_path.exists()

    r = report(site, "--cloud", cloud_url(cloud), token="wrong-token")
    assert r.exit_code == 2 and "the cloud refused the token" in r.stderr


def _valid_report(site: str, gw: str) -> dict[str, Any]:
    return {
        "site_id": site,
        "site_name": "Larch Yard",
        "gateway_id": gw,
        "config": "/home/li/site.yaml",
        "installer": "Li Wei",
        "generated_at": "2026-11-23T10:00:00+00:00",
        "devices": [
            {
                "id": "meter-1",
                "name": None,
                "kind": "smart_meter",
                "model": "sdm120",
                "address": "tcp://10.0.0.2:502 unit 1",
                "found": {
                    "at": "2026-11-23T09:00:00+00:00",
                    "installer": "Li Wei",
                    "model": "sdm120",
                    "label": "x",
                },
                "probed": {
                    "at": "2026-11-23T09:01:00+00:00",
                    "installer": "Li Wei",
                    "ok": True,
                    "summary": "ok",
                },
                "tests": [],
                "live_check": None,
                "complete": True,
                "missing": [],
            }
        ],
        "complete": True,
        "log_entries": 3,
        "registered": None,
    }


def test_commissioning_api_permissions_and_validation(bg: BackgroundLoop, cloud: App, tmp_path: Path) -> None:
    registered_site(bg, cloud, tmp_path, "larch-yard", "gw-larch")
    path = "/api/v1/gateways/gw-larch/commissioning"
    good = _valid_report("larch-yard", "gw-larch")
    installer = token_for(bg, cloud, "ian-larch", Role.INSTALLER, ["larch-yard"])
    operator = token_for(bg, cloud, "op-larch", Role.OPERATOR, ["larch-yard"])
    viewer = token_for(bg, cloud, "vic-larch", Role.VIEWER, ["larch-yard"])
    stranger = token_for(bg, cloud, "ian-stranger", Role.INSTALLER, ["somewhere-else"])

    assert api(cloud, "GET", path, viewer).json()["latest"] is None
    for who in (operator, viewer, stranger):
        r = api(cloud, "POST", path, who, json=good)
        assert r.status_code == 403, r.text
        assert r.json()["error"]["code"] == "forbidden"
    assert api(cloud, "GET", path, stranger).status_code == 403
    assert api(cloud, "POST", path, "nope", json=good).status_code == 401
    assert api(cloud, "GET", "/api/v1/gateways/gw-nowhere/commissioning", installer).status_code == 404

    bad = copy.deepcopy(good)
    bad["devices"][0]["complete"] = "perhaps"
    bad["devices"][0]["extra"] = 1
    r = api(cloud, "POST", path, installer, json=bad)
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_report"
    assert "devices.0.complete" in r.text and "devices.0.extra" in r.text
    r = api(cloud, "POST", path, installer, content=b"{not json")
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_report"
    r = api(cloud, "POST", path, installer, json={**good, "gateway_id": "gw-other"})
    assert r.status_code == 422 and "not 'gw-larch' at 'larch-yard'" in r.text
    r = api(cloud, "POST", path, installer, json={**good, "generated_at": "2026-11-23T10:00:00"})
    assert r.status_code == 422 and "generated_at" in r.text  # a time without a zone is ambiguous

    # Too big: refused from the declared length, and when streamed without one.
    big = {**good, "config": "x" * 100, "padding": "y" * MAX_REPORT_BYTES}
    r = api(cloud, "POST", path, installer, json=big)
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_large"

    def chunks() -> Any:
        for _ in range(MAX_REPORT_BYTES // 65536 + 2):
            yield b" " * 65536

    r = api(cloud, "POST", path, installer, content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413

    # Nothing of the refused uploads was stored; a good one by an admin is.
    assert api(cloud, "GET", path, viewer).json()["history"] == []
    admin = token_for(bg, cloud, "root-larch", Role.ADMIN, [])
    r = api(cloud, "POST", path, admin, json=good)
    assert r.status_code == 201, r.text
    assert api(cloud, "GET", path, viewer).json()["latest"]["report"] == r.json()["report"]

    spec = api(cloud, "GET", "/api/v1/openapi.json", viewer).json()
    body = spec["paths"]["/api/v1/gateways/{gateway_id}/commissioning"]["post"]["requestBody"]
    ref = body["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
    assert "devices" in spec["components"]["schemas"][ref]["properties"]


async def test_upgrade_heads_creates_the_commissioning_table_as_declared(tmp_path: Path) -> None:
    settings = CloudSettings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'm.db'}")
    engine = make_engine(settings)
    try:
        await upgrade(engine, settings)

        def check(conn: Connection) -> list[object]:
            assert "commissioning_reports" in inspect(conn).get_table_names()
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            diffs = compare_metadata(ctx, CommissioningReportRow.metadata)
            return [d for d in diffs if "commissioning_reports" in repr(d)]

        async with engine.connect() as conn:
            assert await conn.run_sync(check) == []
    finally:
        await engine.dispose()


def test_a_device_added_after_registration_is_checked_at_handover(
    bg: BackgroundLoop, cloud: App, tmp_path: Path
) -> None:
    """`register` names the ids another site has; a device added to the config afterwards was checked by
    nobody (the cloud only logged it). The report's upload names it, in red, at handover."""
    elm_door = DeviceInfo(id="door-1", kind="door_access", model="generic")
    reported(bg, cloud, "elm-walk", "gw-elm-walk", [elm_door])  # another estate's gateway
    site, token = registered_site(bg, cloud, tmp_path, "ivy-walk", "gw-ivy")  # with gate-1: no clash
    door = "  - {id: door-1, kind: door_access, transport: {type: modbus_tcp, host: 127.0.0.1, unit: 7}}\n"
    site.write_text(site.read_text().replace("devices:\n", "devices:\n" + door), encoding="utf-8")
    r = report(site, "--upload", token=token)
    assert r.exit_code == 0, r.output
    assert "Device ids another site already has: door-1." in r.stdout
    # The API's answer to the upload says which ids, never whose.
    uploaded = json.loads((tmp_path / "site.commissioning-report.json").read_text())
    reply = api(cloud, "POST", "/api/v1/gateways/gw-ivy/commissioning", token, json=uploaded)
    assert reply.status_code == 201 and reply.json()["device_ids_taken"] == ["door-1"]
    assert "elm-walk" not in reply.text
