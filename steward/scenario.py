"""`steward demo --scenario`: a scripted hour at the estate, played on the real stack in about a minute.

Each step drives simulators or the cloud API the way residents, visitors and operators would, then
checks what the cloud saw. The summary lists every check; the exit code is 0 only if all passed.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import httpx

from protocol import Event
from steward.config import SiteConfig

Say = Callable[[str], None]


@dataclass
class Outcome:
    checks: list[tuple[str, bool, str]] = field(default_factory=list)
    recorded: Counter[str] = field(default_factory=Counter)

    def check(self, what: str, ok: bool, detail: str = "") -> bool:
        self.checks.append((what, ok, detail))
        return ok

    @property
    def passed(self) -> bool:
        return all(ok for _, ok, _ in self.checks)


def _first(site: SiteConfig, kind: str, transport: str | None = None) -> str | None:
    for d in site.devices:
        if d.kind == kind and (transport is None or d.transport.type == transport):
            return d.id
    return None


async def _until(pred: Callable[[], Awaitable[bool]], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await pred():
            return True
        await asyncio.sleep(0.1)
    return False


async def play(
    site: SiteConfig,
    gateway: Any,
    sims: dict[str, Any],
    *,
    http_port: int,
    say: Say,
    # A coroutine function, not any awaitable: play runs it as a task.
    cut_uplink: Callable[[float], Coroutine[Any, Any, None]] | None = None,
    credentials: tuple[str, str] | None = None,
) -> int:
    out = Outcome()

    async def count(event: Event) -> None:
        out.recorded[event.type] += 1

    gateway.hooks.append(count)
    base = f"http://127.0.0.1:{http_port}/api/v1"
    async with httpx.AsyncClient(base_url=base, timeout=15) as http:
        if credentials is not None:
            username, password = credentials
            login = await http.post("/auth/login", json={"username": username, "password": password})
            login.raise_for_status()
            http.headers["Authorization"] = f"Bearer {login.json()['access_token']}"

        async def cloud_has(event_type: str, device_id: str | None = None, at_least: int = 1) -> bool:
            params: dict[str, Any] = {"type": event_type, "limit": 200}
            if device_id:
                params["device_id"] = device_id
            r = await http.get("/events", params=params)
            return r.status_code == 200 and len(r.json()["items"]) >= at_least

        async def command(device_id: str, action: str, reason: str) -> dict[str, Any]:
            r = await http.post(f"/devices/{device_id}/commands", json={"action": action, "reason": reason})
            if r.status_code != 202:
                return {"status": f"HTTP {r.status_code}", "reason": r.text[:200]}
            cid = r.json()["id"]
            deadline = time.monotonic() + 20
            body: dict[str, Any] = r.json()
            while time.monotonic() < deadline and body["status"] not in (
                "succeeded",
                "failed",
                "expired",
                "rejected",
            ):
                body = (await http.get(f"/commands/{cid}", params={"wait": 5})).json()
            return body

        await _until(lambda: _registered(http, site), 20)
        say(f"\n=== A scripted hour at {site.site_name} ===\n")

        gate = _first(site, "barrier_gate")
        if gate:
            say("08:00  A resident's car pulls up at the east gate; the centre opens it remotely.")
            sims[gate].vehicle_arrives()
            res = await command(gate, "open", "resident car, plate recognised by the guard camera")
            out.check(
                "resident's car let in through the east gate", res["status"] == "succeeded", res["status"]
            )
            sims[gate].vehicle_leaves()
            await asyncio.sleep(0.5)
            res = await command(gate, "close", "car through")
            out.check("gate closed behind the car", res["status"] == "succeeded", res["status"])

        intercom = _first(site, "video_intercom")
        if intercom and intercom in sims:
            say(
                "08:10  A visitor calls the centre from the building 1 door station; an operator lets them in"
            )
            await sims[intercom].call(target="centre", apartment="1-1-1202")
            ok = await _until(lambda: cloud_has("intercom.call_started", intercom), 10)
            out.check("visitor's call reached the operations centre", ok)
            res = await command(intercom, "unlock", "visitor for 1-1-1202, confirmed by phone")
            out.check(
                "door beside the door station unlocked remotely", res["status"] == "succeeded", res["status"]
            )

        door = _first(site, "door_access", "mqtt")
        if door and door in sims:
            say("08:20  Someone presents an unknown card at the building 1 lobby door.")
            await sims[door].present_card(4242, facility=201)
            ok = await _until(lambda: cloud_has("access.presented", door), 10)
            out.check("unknown card presentation reported to the cloud", ok)
            out.check("door stayed locked for the unknown card", sims[door].state().get("lock") == "locked")

        if cut_uplink is not None and gate:
            say(
                "08:30  The estate's internet link drops for a while; the gate keeps working, events are kept"
            )
            before = out.recorded["gate.opened"]
            async with asyncio.TaskGroup() as tg:
                tg.create_task(cut_uplink(4.0))
                await asyncio.sleep(0.5)
                for _ in range(2):
                    # On-site, the gatehouse still cycles the gate by hand while the cloud is unreachable.
                    await gateway.drivers[gate].execute("open", {})
                    await gateway.drivers[gate].execute("close", {})
            say("08:40  The link is back; the backlog drains to the cloud.")
            opened = out.recorded["gate.opened"]
            ok = await _until(lambda: cloud_has("gate.opened", gate, at_least=opened), 30)
            out.check(
                "every gate event from the outage reached the cloud",
                ok and opened >= before + 2,
                f"{opened} gate openings recorded",
            )

        panel = _first(site, "fire_panel")
        if panel:
            say("08:50  Smoke in the building 1 lobby: fire zone 1 goes into alarm (火警).")
            sims[panel].alarm(1)
            ok = await _until(lambda: cloud_has("fire.alarm", panel), 10)
            out.check("fire alarm reached the operations centre", ok)
            rule = next((r for r in site.fire_linkage if r.panel == panel), None)
            if rule is not None:
                await _until(lambda: cloud_has("fire.linkage_activated", panel), 10)
                for door_id in rule.doors:
                    held = await _until(functools.partial(_door_released, sims[door_id]), 5)
                    out.check(f"fire linkage released door {door_id} for evacuation", held)
                for gate_id in rule.gates:
                    raised = await _until(functools.partial(_gate_raised, sims[gate_id]), 10)
                    out.check(f"fire linkage raised gate {gate_id} for fire engines", raised)
                if rule.gates:
                    say("08:52  An operator tries to close a gate during the alarm; the gateway refuses.")
                    res = await command(rule.gates[0], "close", "operator mistake")
                    out.check(
                        "closing a gate during a fire alarm is refused",
                        res["status"] == "rejected",
                        f"{res['status']}: {res.get('result_reason') or res.get('reason')}",
                    )
                say("09:05  The fire brigade clears the alarm; the panel is reset and an operator confirms.")
                sims[panel].restore(1)
                sims[panel].reset()
                await asyncio.sleep(1.0)  # a few panel polls, so the gateway sees the reset
                res = await command(panel, "release_linkage", "alarm cleared by the fire brigade")
                out.check(
                    "operator released fire linkage after the panel reset", res["status"] == "succeeded"
                )
                ok = await _until(lambda: cloud_has("fire.linkage_released", panel), 10)
                out.check("fire linkage release recorded in the cloud", ok)
            else:
                sims[panel].restore(1)
                sims[panel].reset()

        await asyncio.sleep(0.5)
        stats = await gateway.buffer.stats()
        out.check(
            "gateway buffer drained", stats.depth == 0 or await _drained(gateway), f"depth {stats.depth}"
        )

    say("\n=== Summary ===")
    for what, ok, detail in out.checks:
        say(f"  [{'ok' if ok else 'FAILED'}] {what}" + (f" ({detail})" if detail and not ok else ""))
    say("  events recorded at the gateway: " + ", ".join(f"{t} {n}" for t, n in sorted(out.recorded.items())))
    say(f"\n{'All checks passed.' if out.passed else 'Some checks FAILED.'}")
    return 0 if out.passed else 1


async def _door_released(sim: Any) -> bool:
    state = sim.state()
    return bool(state.get("lock") == "unlocked" or state.get("released"))


async def _gate_raised(sim: Any) -> bool:
    return bool(sim.state()["state"] == "open")


async def _drained(gateway: Any) -> bool:
    async def empty() -> bool:
        return bool((await gateway.buffer.stats()).depth == 0)

    return await _until(empty, 15)


async def _registered(http: httpx.AsyncClient, site: SiteConfig) -> bool:
    r = await http.get(f"/devices/{site.devices[0].id}")
    return r.status_code == 200
