"""The console's command log (指令记录): who opened what, when and why, filtered, paged, with each
command's audit trail, and commands sent while it is open joining at the top."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from tests.console.support import ARTIFACTS, UI_TIMEOUT_MS, door, gate, needs_browser, running_console
from tests.stack import Stack

pytestmark = needs_browser


async def send(stack: Stack, device_id: str, action: str, reason: str = "") -> str:
    r = await stack.http.post(
        f"/api/v1/devices/{device_id}/commands",
        params={"wait": 10},
        json={"action": action, "reason": reason},
    )
    assert r.status_code in (200, 202), r.text
    return str(r.json()["id"])


async def test_the_log_shows_who_opened_what_and_why_with_its_trail(tmp_path: Path) -> None:
    from playwright.async_api import expect

    async with running_console(tmp_path, [gate(), door()]) as console:
        stack = console.stack
        await stack.wait_for("/api/v1/devices/east-gate")
        await stack.wait_for("/api/v1/devices/door-b1-lobby")
        # More than a page (50) of door releases, then the two the manager is looking for.
        for _ in range(50):
            await send(stack, "door-b1-lobby", "release")
        van = await send(stack, "east-gate", "open", "delivery: SF Express van for 1-1-1202")
        await send(stack, "door-b1-lobby", "unlock", "visitor: 1-1-1203")

        await console.open()
        await console.open_site("oak-garden")
        page = console.page
        await page.get_by_role("link", name="Commands").click()
        rows = page.locator("#log-table tbody tr:not(.trail-row)")
        await expect(rows).to_have_count(50, timeout=UI_TIMEOUT_MS)  # one page, newest first
        await expect(rows.first).to_contain_text("visitor: 1-1-1203")
        await expect(rows.first).to_contain_text("Unlock door")
        older = page.get_by_role("button", name="Older commands")
        await older.click()
        await expect(rows).to_have_count(52)
        await expect(older).to_be_hidden()

        # Only the gate: the van, with what happened to the command step by step.
        await page.get_by_label("Device").select_option("east-gate")
        await expect(rows).to_have_count(1)
        gate_row = page.locator(f'#log-table tr[data-command="{van}"]')
        await expect(gate_row).to_contain_text("delivery: SF Express van for 1-1-1202")
        await expect(gate_row).to_contain_text("admin")
        await expect(gate_row).to_have_attribute("data-status", "succeeded")
        await gate_row.get_by_role("button", name="Audit trail").click()
        trail = page.locator("#log-table tr.trail-row li")
        # The gate travels (0.2 s here): the gateway says it accepted the command before it succeeded.
        await expect(trail).to_have_count(4)
        assert [await li.get_attribute("data-status") for li in await trail.all()] == [
            "pending",
            "sent",
            "accepted",
            "succeeded",
        ]
        await expect(trail.first).to_contain_text("delivery: SF Express van for 1-1-1202")
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "console-commands.png"), full_page=True)

        # The estate's day (Shanghai): today's has the van, yesterday's nothing.
        today = datetime.now(ZoneInfo("Asia/Shanghai")).date()
        await page.get_by_label("Day").fill(today.isoformat())
        await expect(rows).to_have_count(1)
        await page.get_by_label("Day").fill((today - timedelta(days=1)).isoformat())
        await expect(rows).to_have_count(0)
        await expect(page.locator("#log-empty")).to_be_visible()

        # Back to everything: a command sent now joins at the top as it happens.
        await page.get_by_label("Day").fill("")
        await page.get_by_label("Device").select_option("")
        await expect(rows).to_have_count(50)
        latest = await send(stack, "east-gate", "close")
        await expect(rows.first).to_have_attribute("data-command", latest)
        await expect(rows.first).to_have_attribute("data-status", "succeeded")
        # The log's times are the estate's: the header says which zone.
        await expect(page.locator("#tz-note")).to_contain_text("Asia/Shanghai")
