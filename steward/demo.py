"""`steward demo`: broker, cloud, one gateway and a simulator for every device, in one process."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

from protocol import Event
from steward.broker import EmbeddedBroker
from steward.config import SiteConfig
from steward.narrate import describe

DEMO_VAR = Path("var/demo")
QUIET_TYPES = {"meter.reading", "sensor.reading"}


def _say(text: str) -> None:
    print(text, flush=True)


async def _narrate(event: Event) -> None:
    if event.type not in QUIET_TYPES:
        _say("  " + describe(event))


def _cloud_settings(site: SiteConfig, http_port: int) -> Any:
    from cloud.settings import CloudSettings

    return CloudSettings(
        database_url=f"sqlite+aiosqlite:///{DEMO_VAR / 'cloud.db'}",
        broker_host=site.uplink.host,
        broker_port=site.uplink.port,
        topic_prefix=site.uplink.topic_prefix,
        http_port=http_port,
    )


def _banner(site: SiteConfig, http_port: int, credentials: tuple[str, str]) -> None:
    gate = next((d for d in site.devices if d.kind == "barrier_gate"), None)
    base = f"http://127.0.0.1:{http_port}"
    username, password = credentials
    _say("")
    _say(f"Steward demo — estate '{site.site_name}' ({site.site_id}), gateway {site.gateway_id}")
    _say(
        f"  {len(site.devices)} simulated devices; MQTT broker {site.uplink.broker_url}; "
        f"cloud API {base}/api/v1"
    )
    _say(f"  Operator console (运营中心控制台): {base}/console/")
    _say(f"  Log in as {username!r}, password {password!r} (new every run):")
    _say(
        f"    TOKEN=$(curl -s -X POST {base}/api/v1/auth/login -H 'content-type: application/json' "
        f'-d \'{{"username": "{username}", "password": "{password}"}}\' '
        "| python3 -c 'import json,sys; print(json.load(sys.stdin)[\"access_token\"])')"
    )
    if gate is not None:
        _say("  Open a gate from the operations centre (开闸):")
        _say(
            f"    curl -s -X POST {base}/api/v1/devices/{gate.id}/commands "
            "-H \"Authorization: Bearer $TOKEN\" -H 'content-type: application/json' "
            '-d \'{"action": "open", "reason": "visitor: delivery for 1-1-1202"}\''
        )
        _say(f'  Who opened what, and why: curl -s -H "Authorization: Bearer $TOKEN" {base}/api/v1/commands')
    _say(f"  See what happened: curl -s -H \"Authorization: Bearer $TOKEN\" '{base}/api/v1/events?limit=20'")
    _say(f"  API docs: {base}/docs     Stop: Ctrl-C")
    _say("")


def _fresh_var() -> None:
    """Every demo starts from an empty estate."""
    if DEMO_VAR.exists():
        shutil.rmtree(DEMO_VAR)
    DEMO_VAR.mkdir(parents=True)


async def run_demo(site: SiteConfig, *, http_port: int = 8080, scenario: bool = False) -> int:
    """Run until cancelled (Ctrl-C); with ``scenario`` play the script and return its exit code."""
    from cloud.main import serve
    from edge.gateway import Gateway
    from simulators.registry import run_site_simulators

    await asyncio.to_thread(_fresh_var)
    site = site.model_copy(
        update={"buffer": site.buffer.model_copy(update={"path": DEMO_VAR / "edge-buffer.db"})}, deep=True
    )
    settings = _cloud_settings(site, http_port)
    result = 0
    async with EmbeddedBroker(host=site.uplink.host, port=site.uplink.port) as broker:

        async def cut_uplink(seconds: float) -> None:
            await broker.stop()
            await asyncio.sleep(seconds)
            await broker.start()

        ready = asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            cloud = tg.create_task(serve(settings, ready=ready), name="cloud")
            async with asyncio.timeout(30):
                await ready.wait()
            from cloud.auth import ensure_demo_admin

            credentials = await ensure_demo_admin(settings)
            async with run_site_simulators(site, travel_time_s=1.0 if scenario else None) as sims:
                gateway = Gateway(site, ble_scanner=_ble_scanner(site, sims))
                gateway.hooks.append(_narrate)
                gw_task = tg.create_task(gateway.run(), name="gateway")
                async with asyncio.timeout(30):
                    await gateway.started.wait()
                if scenario:
                    from steward.scenario import play

                    result = await play(
                        site,
                        gateway,
                        sims,
                        http_port=http_port,
                        say=_say,
                        cut_uplink=cut_uplink,
                        credentials=credentials,
                    )
                else:
                    _banner(site, http_port, credentials)
                    await asyncio.Event().wait()
                gw_task.cancel()
            cloud.cancel()
    return result


def _ble_scanner(site: SiteConfig, sims: dict[str, Any]) -> Any:
    """The demo has no radio: BLE sensors advertise through bleak with the simulators' backend."""
    if not any(d.transport.type == "ble" for d in site.devices):
        return None
    from drivers.transports.ble import BleScanner
    from simulators.ble_sensor import fake_backend_for

    return BleScanner(backend=fake_backend_for(sims))
