"""The event feed (live, filterable) and meter readings as charts."""

from __future__ import annotations

from pathlib import Path

from tests.console.support import door, gate, meter, needs_browser, running_console

pytestmark = needs_browser


async def test_event_feed_is_live_and_filters_by_kind_and_severity(tmp_path: Path) -> None:
    from playwright.async_api import expect

    async with running_console(tmp_path, [gate(), door()]) as console:
        stack = console.stack
        await stack.wait_for("/api/v1/devices/east-gate")
        await console.open()
        await console.open_site("oak-garden")
        page = console.page
        await page.get_by_role("link", name="Events").click()
        table = page.locator("#event-table tbody")

        # Opened from the API while the feed is on screen: the events arrive over the stream.
        r = await stack.http.post("/api/v1/devices/east-gate/commands", json={"action": "open"})
        assert r.status_code == 202, r.text
        opened = table.locator('tr[data-type="gate.opened"]')
        await expect(opened).to_contain_text("gate opened")
        await expect(opened).to_contain_text("east-gate")
        await expect(opened).to_contain_text("east entrance in")

        await page.get_by_label("Device kind").select_option("door_access")
        await expect(opened).to_have_count(0)
        await page.get_by_label("Device kind").select_option("barrier_gate")
        await expect(opened).to_have_count(1)
        await page.get_by_label("Severity").select_option("safety")
        await expect(opened).to_have_count(0)
        await page.get_by_label("Severity").select_option("access")
        await expect(opened).to_have_count(1)


async def test_meter_readings_are_charted(tmp_path: Path) -> None:
    from playwright.async_api import expect

    async with running_console(tmp_path, [meter()]) as console:
        stack = console.stack
        await stack.wait_for(
            "/api/v1/devices/meter-b1/readings?bucket=1h",
            lambda r: r.status_code == 200 and r.json()["series"],
        )
        await console.open()
        await console.open_site("oak-garden")
        page = console.page
        await page.get_by_role("link", name="Readings").click()
        card = page.locator("#readings-meter-b1")
        await expect(card).to_contain_text("Apt 1202")
        charts = card.locator("figure.chart")
        await expect(charts.first).to_be_visible()
        assert await charts.count() >= 1
        await expect(charts.first.locator("svg[role=img] circle").first).to_be_attached()
        await expect(charts.first).to_contain_text("hourly average")
