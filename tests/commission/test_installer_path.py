"""The installer's whole path, on real sockets: scan the Modbus line (simulators), add what was found,
probe and test, check the site live, register the gateway with the cloud, write and upload the report;
then start the gateway with exactly the config and credentials those commands wrote, on a broker that
enforces the accounts registration issued, and see it in the cloud: online, its devices listed, its
commissioning report there."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from cloud.auth import Role
from cloud.auth.registration import load_accounts
from simulators.barrier_gate import BarrierGateSimulator
from simulators.modbus_server import ModbusSimServer
from simulators.smart_meter import SmartMeterSimulator
from steward.broker import EmbeddedBroker, free_port
from steward.config import load_site_config
from tests.auth.support import App, served
from tests.commission.support import BackgroundLoop, Hosted, api, cli, cloud_url, open_cloud, token_for

pytestmark = pytest.mark.timeout(240)
SITE, GW = "maple-court", "gw-maple"

SITE_YAML = """\
# Maple Court: started from the demo file, devices to be added by `steward commission add`.
site_id: {site}
site_name: Maple Court
gateway_id: {gw}

uplink:
  # The estate's broker (the operations centre's).
  broker_url: mqtt://127.0.0.1:{broker_port}

buffer:
  path: {buffer}
  linger_ms: 5

devices: []
"""


@pytest.fixture
def modbus_line(bg: BackgroundLoop) -> Iterator[ModbusSimServer]:
    async def start() -> tuple[ModbusSimServer, BarrierGateSimulator]:
        server = ModbusSimServer()
        SmartMeterSimulator(1, model="sdm120", server=server)
        gate = BarrierGateSimulator(6, server=server, travel_time_s=0.2)
        await server.start()
        return server, gate

    server, gate = bg.run(start())
    yield server
    bg.run(gate.stop())
    bg.run(server.stop())


def run(*args: str, token: str | None = None) -> Any:
    env = {"STEWARD_INSTALLER": "Li Wei", **({"STEWARD_TOKEN": token} if token else {})}
    result = cli(*args, env=env)
    assert result.exit_code == 0, f"{args}: {result.output}"
    return result


def eventually(fetch: Any, check: Any, timeout: float = 45) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if check(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out; last: {value}")
        time.sleep(0.1)


def test_scan_add_check_register_report_then_the_gateway_runs(
    bg: BackgroundLoop, modbus_line: ModbusSimServer, tmp_path: Path
) -> None:
    broker_port = free_port()  # the estate broker of step 2, named in the site file from the start
    site = tmp_path / "site.yaml"
    site.write_text(
        SITE_YAML.format(site=SITE, gw=GW, broker_port=broker_port, buffer=tmp_path / "edge.db"),
        encoding="utf-8",
    )
    scan = tmp_path / "scan.json"
    config = ("--config", str(site))
    bus = ("--host", "127.0.0.1", "--port", str(modbus_line.port))

    # 1. On site, with the cloud reachable (its broker still the open one the estate used before).
    with Hosted(bg, lambda: open_cloud(tmp_path / "cloud")) as cloud:
        cloud_settings = cloud.settings
        token = token_for(bg, cloud, "li-wei", Role.INSTALLER, [SITE])

        r = run("scan", "modbus", *bus, "--units", "1-8", "--timeout", "0.3", "--save", str(scan), *config)
        assert "2 answered (2 recognised, 0 unknown model), 6 no answer" in r.stdout
        run("add", *config, "--from-scan", str(scan), "--unit", "1", "--id", "meter-1", "--name", "Pump room")
        run(
            "add",
            *config,
            "--from-scan",
            str(scan),
            "--unit",
            "6",
            "--id",
            "gate-1",
            "--poll-interval",
            "0.2",
            "--option",
            "travel_timeout_s=5",
        )
        run("probe", "meter-1", *config, "--timeout", "0.5")
        run("probe", "gate-1", *config, "--timeout", "0.5")
        run("test", "gate-1", "open", *config)
        run("test", "gate-1", "close", *config)
        r = run("config", "check", *config, "--live", "--timeout", "0.5")
        assert "OK:" in r.stdout

        r = run("register", *config, "--cloud", cloud_url(cloud), token=token)
        assert f"registered as {GW}@{SITE}" in r.stdout
        r = run("report", *config, "--upload", token=token)
        assert "2/2 device(s) complete" in r.stdout and "Uploaded" in r.stdout

    assert (site.stat().st_mode & 0o777) == 0o600
    assert (tmp_path / "site.yaml.credentials.json").stat().st_mode & 0o777 == 0o600
    text = site.read_text()
    assert text.startswith("# Maple Court: started from the demo file")
    assert "  # The estate's broker (the operations centre's)." in text

    # 2. The estate's broker now enforces the accounts the cloud issued; the gateway runs the written file.
    accounts = load_accounts(cloud_settings)
    assert accounts is not None

    @contextlib.asynccontextmanager
    async def estate() -> AsyncIterator[App]:
        from edge.gateway import Gateway

        async with EmbeddedBroker(port=broker_port, accounts=accounts) as broker:
            settings = cloud_settings.model_copy(
                update={"broker_port": broker.port, "http_port": free_port()}
            )
            async with served(settings) as app:
                gateway = Gateway(load_site_config(site))
                task = asyncio.create_task(gateway.run(), name="gateway")
                try:
                    async with asyncio.timeout(60):
                        await gateway.started.wait()
                    yield app
                finally:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task

    with Hosted(bg, estate) as app:
        gateways = eventually(
            lambda: api(app, "GET", "/api/v1/gateways", token, params={"site_id": SITE}).json()["items"],
            lambda gws: [(g["id"], g["online"]) for g in gws] == [(GW, True)],
        )
        assert gateways[0]["last_seen"] is not None
        devices = eventually(
            lambda: api(app, "GET", "/api/v1/devices", token, params={"gateway_id": GW}).json()["items"],
            lambda ds: {d["id"] for d in ds} == {"meter-1", "gate-1"},
        )
        assert {(d["id"], d["kind"]) for d in devices} == {
            ("meter-1", "smart_meter"),
            ("gate-1", "barrier_gate"),
        }

        got = api(app, "GET", f"/api/v1/gateways/{GW}/commissioning", token)
        assert got.status_code == 200, got.text
        latest = got.json()["latest"]
        assert (latest["uploaded_by"], latest["installer"], latest["complete"]) == ("li-wei", "Li Wei", True)
        report = latest["report"]
        assert {d["id"]: d["found"]["model"] for d in report["devices"]} == {
            "meter-1": "sdm120",
            "gate-1": "io-module",
        }
        assert [t["test"] for t in report["devices"][1]["tests"]] == ["open", "close"]
        assert report["registered"]["broker_username"] == f"{GW}@{SITE}"
        local = json.loads((tmp_path / "site.commissioning-report.json").read_text())
        assert (report["log_entries"], report["config"]) == (local["log_entries"], local["config"])
