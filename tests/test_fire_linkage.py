"""Fire linkage on a gateway with no cloud: Modbus simulators on real sockets, the gateway's own
drivers, buffer and command handler. The uplink broker address has nothing listening, so every test
here also shows the building keeps working with the internet gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from edge.gateway import Gateway
from edge.linkage import FireLinkage, FireLinkageRule, check_linkage_rules
from protocol import Command, CommandResult, CommandStatus, Event
from protocol.models import utcnow
from simulators.modbus_server import free_port
from simulators.registry import run_site_simulators
from steward.config import SiteConfig
from tests.stack import site_config

TRAVEL = 0.1
COIL_HOLD = 3  # barrier gate hold-open latch (drivers/barrier_gate.py)


def modbus(port: int, unit: int = 1) -> dict[str, Any]:
    return {"type": "modbus_tcp", "host": "127.0.0.1", "port": port, "unit": unit, "timeout_s": 0.3}


def devices(poll_s: float = 0.1) -> list[dict[str, Any]]:
    """A fire panel, two doors and a gate, each behind its own Modbus module (its own port)."""
    return [
        {
            "id": "fire-1",
            "kind": "fire_panel",
            "poll_interval_s": poll_s,
            "transport": modbus(free_port(), 3),
            "options": {"zones": 8, "zone_names": {"3": "Block C lobby"}},
        },
        {"id": "door-c", "kind": "door_access", "poll_interval_s": 0.1, "transport": modbus(free_port())},
        {"id": "door-d", "kind": "door_access", "poll_interval_s": 0.1, "transport": modbus(free_port())},
        {
            "id": "gate-east",
            "kind": "barrier_gate",
            "poll_interval_s": 0.1,
            "transport": modbus(free_port()),
            "options": {"pulse_s": 0.02, "travel_timeout_s": 2.0, "confirm_interval_s": 0.02},
        },
    ]


RULES = [
    FireLinkageRule(panel="fire-1", zones=[3, 4], doors=["door-c"], gates=["gate-east"]),
    FireLinkageRule(panel="fire-1", zones=[7], doors=["door-d"]),
]


@dataclass
class Edge:
    site: SiteConfig
    gateway: Gateway
    linkage: FireLinkage
    sims: dict[str, Any]
    seen: list[Event]

    async def command(self, device_id: str, action: str, issued_by: str = "op-li") -> CommandResult:
        assert self.gateway.commands is not None
        now = utcnow()
        cmd = Command(
            id=f"cmd-{time.monotonic_ns()}",
            site_id=self.site.site_id,
            gateway_id=self.site.gateway_id,
            device_id=device_id,
            action=action,
            issued_at=now,
            expires_at=now + timedelta(seconds=30),
            issued_by=issued_by,
        )
        async with asyncio.timeout(10):
            result = await self.gateway.commands.handle(cmd.to_bytes())
        assert result is not None
        return result

    def types(self) -> list[str]:
        return [e.type for e in self.seen]


async def until(check: Callable[[], bool], timeout: float = 2.0, what: str = "condition") -> float:
    """Wait for ``check()``; return how long it took (fails the test after ``timeout``)."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.005)
    return time.monotonic() - started


@contextlib.asynccontextmanager
async def running_edge(
    site: SiteConfig, rules: list[FireLinkageRule], sims: dict[str, Any]
) -> AsyncIterator[Edge]:
    """One gateway with fire linkage, run the way the gateway will run it (its loop in the TaskGroup)."""
    gateway = Gateway(site)
    seen: list[Event] = []

    async def watch(event: Event) -> None:
        seen.append(event)

    gateway.hooks.append(watch)
    linkage = FireLinkage(gateway, rules, reassert_interval_s=1.0, check_interval_s=0.1, retry_s=0.2)
    gateway.linkage = linkage.attach()
    async with asyncio.TaskGroup() as tg:
        gw = tg.create_task(gateway.run(), name="gateway")
        try:
            async with asyncio.timeout(10):
                await gateway.started.wait()
            yield Edge(site, gateway, linkage, sims, seen)
        finally:
            gw.cancel()


@pytest.fixture
def no_cloud_site(tmp_path: Path) -> SiteConfig:
    # Nothing listens on this port: the uplink never connects for the whole test.
    return site_config(tmp_path, free_port(), devices())


def door_released(sims: dict[str, Any], dev: str) -> bool:
    return bool(sims[dev].released)


def gate_held(sims: dict[str, Any], dev: str) -> bool:
    return bool(sims[dev].unit.get_bit("coils", COIL_HOLD))


def test_rules_are_checked_against_the_site() -> None:
    kinds = {"fire-1": "fire_panel", "door-c": "door_access", "gate-east": "barrier_gate"}
    assert check_linkage_rules(RULES[:1], kinds) == []
    bad = FireLinkageRule(panel="door-c", zones="any", doors=["gate-east"])
    problems = check_linkage_rules([bad], kinds)
    assert "fire_linkage[0].panel: 'door-c' is not a fire_panel device of this site" in problems
    assert "fire_linkage[0].doors: 'gate-east' is not a door_access device of this site" in problems
    with pytest.raises(ValueError, match="at least one door or gate"):
        FireLinkageRule(panel="fire-1")


async def test_alarm_releases_doors_and_raises_gate_without_cloud(no_cloud_site: SiteConfig) -> None:
    async with (
        run_site_simulators(no_cloud_site, travel_time_s=TRAVEL) as sims,
        running_edge(no_cloud_site, RULES, sims) as edge,
    ):
        assert edge.gateway.client is not None and not edge.gateway.client.is_connected
        await asyncio.sleep(0.3)  # baseline polls
        assert not door_released(sims, "door-c") and sims["gate-east"].gate_state == "closed"

        sims["fire-1"].alarm(3)
        took = await until(
            lambda: door_released(sims, "door-c") and gate_held(sims, "gate-east"), 1.0, "linkage"
        )
        assert took < 1.0
        await until(lambda: sims["gate-east"].gate_state == "open", 2.0, "gate open")
        # Zone 3 is not linked to door-d.
        assert not door_released(sims, "door-d")
        assert edge.gateway.drivers["door-c"].snapshot()["mode"] == "held"
        assert edge.linkage.holding("door-c") == "fire linkage: fire-1 zone 3"

        # Cloud commands that would undo it are refused with the reason.
        r = await edge.command("door-c", "lock")
        assert r.status is CommandStatus.REJECTED
        assert r.reason == (
            "fire linkage active: zone 3 in alarm; doors stay released until the panel is reset "
            "and an operator confirms"
        )
        r = await edge.command("gate-east", "close")
        assert r.status is CommandStatus.REJECTED
        assert r.reason is not None and "gates stay open" in r.reason
        assert (await edge.command("door-d", "lock")).status is CommandStatus.SUCCEEDED  # not linked

        # Someone relocks the door at the I/O module: the linkage notices the drift and re-asserts.
        sims["door-c"].unit.set_bit("coils", 0, False)
        await until(lambda: door_released(sims, "door-c"), 1.0, "door re-released")

        # Release refused while the zone is still in alarm...
        r = await edge.command("fire-1", "release_linkage", issued_by="op-wang")
        assert r.status is CommandStatus.REJECTED
        assert r.reason == "panel fire-1 still reports zone 3 in alarm; reset the panel before release"

        # ... and while reset but not confirmed, commands stay refused and doors stay released.
        sims["fire-1"].reset()
        await until(lambda: edge.gateway.drivers["fire-1"].snapshot()["zones"] == {}, 1.0, "panel reset")
        r = await edge.command("door-c", "lock")
        assert r.status is CommandStatus.REJECTED
        assert r.reason is not None and "awaiting operator confirmation" in r.reason
        assert door_released(sims, "door-c")

        r = await edge.command("fire-1", "release_linkage", issued_by="op-wang")
        assert r.status is CommandStatus.SUCCEEDED, r.reason
        assert r.state["confirmed_by"] == "op-wang"
        assert r.state["restored"] == ["door-c", "gate-east"]
        assert not door_released(sims, "door-c")
        assert not gate_held(sims, "gate-east")
        assert edge.linkage.active == {}
        assert (await edge.command("gate-east", "close")).status is CommandStatus.SUCCEEDED
        assert (await edge.command("fire-1", "release_linkage")).status is CommandStatus.REJECTED

        types = edge.types()
        assert "fire.alarm" in types and "fire.restored" in types
        assert types.index("fire.linkage_activated") < types.index("fire.linkage_released")


async def test_restart_during_alarm_reasserts_from_disk(no_cloud_site: SiteConfig) -> None:
    async with run_site_simulators(no_cloud_site, travel_time_s=TRAVEL) as sims:
        async with running_edge(no_cloud_site, RULES, sims) as first:
            await asyncio.sleep(0.2)
            sims["fire-1"].alarm(7)
            await until(lambda: door_released(sims, "door-d"), 1.0, "door-d released")
            # Recorded after the linkage is on disk: the gateway dies once activation is complete.
            await until(lambda: "fire.linkage_activated" in first.types(), 2.0, "activation recorded")

        # Gateway down. The panel is reset but nobody has confirmed, and the door module power-cycles
        # (relay back to locked). Only the stored linkage can know door-d must stay released.
        sims["fire-1"].reset()
        sims["door-d"].unit.set_bit("coils", 0, False)
        assert not door_released(sims, "door-d")

        async with running_edge(no_cloud_site, RULES, sims) as edge:
            took = await until(lambda: door_released(sims, "door-d"), 1.0, "re-asserted after restart")
            assert took < 1.0
            assert ("fire-1", 7) in edge.linkage.active
            r = await edge.command("door-d", "lock")
            assert r.status is CommandStatus.REJECTED
            await until(lambda: edge.gateway.supervisors["fire-1"].health.online is True, 1.0, "panel polled")
            r = await edge.command("fire-1", "release_linkage", issued_by="op-zhao")
            assert r.status is CommandStatus.SUCCEEDED, r.reason
            assert not door_released(sims, "door-d")

        async with running_edge(no_cloud_site, RULES, sims) as edge:
            await asyncio.sleep(0.3)
            assert edge.linkage.active == {}
            assert not door_released(sims, "door-d")


async def test_unreachable_door_is_retried_until_it_answers(no_cloud_site: SiteConfig) -> None:
    async with (
        run_site_simulators(no_cloud_site, travel_time_s=TRAVEL) as sims,
        running_edge(no_cloud_site, RULES, sims) as edge,
    ):
        await asyncio.sleep(0.2)
        sims["door-c"].unit.mode = "dead"
        sims["fire-1"].alarm(4)
        await until(lambda: gate_held(sims, "gate-east"), 1.0, "gate held despite the dead door")
        await until(lambda: edge.linkage.targets["door-c"].failures > 0, 3.0, "door failure seen")
        sims["door-c"].unit.mode = "ok"
        await until(lambda: door_released(sims, "door-c"), 3.0, "door released once it answers")
        faults = [e for e in edge.seen if e.type == "fire.linkage_fault"]
        assert len(faults) == 1 and faults[0].device_id == "door-c"


async def test_alarm_still_releases_doors_while_the_uplink_keeps_failing(
    no_cloud_site: SiteConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failing service is restarted on its own; fire linkage, in the same gateway, carries on."""
    from edge.uplink import Uplink

    async def broken(self: Uplink) -> None:
        raise RuntimeError("uplink bug")

    monkeypatch.setattr(Uplink, "run", broken)
    async with (
        run_site_simulators(no_cloud_site, travel_time_s=TRAVEL) as sims,
        running_edge(no_cloud_site, RULES, sims) as edge,
    ):
        await until(lambda: edge.gateway.service_failures["uplink"] >= 1, 2.0, "the uplink to fail")
        sims["fire-1"].alarm(3)
        await until(lambda: door_released(sims, "door-c") and gate_held(sims, "gate-east"), 1.0, "linkage")
        await until(lambda: edge.gateway.service_failures["uplink"] >= 2, 3.0, "the uplink's restart to fail")
