"""The event feed (live, filterable) and meter readings as charts."""

from __future__ import annotations

import json
from pathlib import Path

from tests.cloud.support import FakeGateway, make_batch, make_event
from tests.console.support import door, gate, meter, needs_browser, real_errors, running_console

pytestmark = needs_browser


async def test_event_feed_is_live_and_filters_by_kind_and_severity(tmp_path: Path) -> None:
    from playwright.async_api import expect

    async with running_console(tmp_path, [gate(), door()]) as console:
        stack = console.stack
        await stack.wait_for("/api/v1/devices/east-gate")
        table = await console.open_events("oak-garden")
        page = console.page

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


async def test_events_the_cloud_refused_are_listed_with_why(tmp_path: Path) -> None:
    """A gateway on another software version sends an event the cloud's schema refuses; the rest of its
    batch is stored and that one kept as sent. Engineering finds it under the feed, with the reason."""
    from playwright.async_api import expect

    async with running_console(tmp_path, [gate()]) as console:
        stack = console.stack
        site, gateway = stack.site.site_id, stack.site.gateway_id
        batch = json.loads(
            make_batch(
                [make_event("east-gate", "gate.opened", 9001), make_event("east-gate", "gate.closed", 9002)],
                site=site,
                gateway=gateway,
            ).to_bytes()
        )
        batch["events"][1]["type"] = "Gate Closed"  # not a dotted lower-case type
        async with FakeGateway(stack.broker.port, site=site, gateway=gateway) as gw:
            await gw.send_raw("events", json.dumps(batch).encode())
            assert (await gw.next_ack()).rejected == 1
        await console.open_events(site)
        page = console.page
        refused = page.locator("#refused")
        await expect(refused.locator("summary")).to_contain_text("Events the cloud refused (1)")
        await refused.locator("summary").click()
        row = refused.locator("#refused-table tbody tr")
        await expect(row).to_have_count(1)
        await expect(row).to_have_attribute("data-gateway", gateway)
        await expect(row).to_contain_text("type")  # where validation failed
        await expect(row).to_contain_text('"Gate Closed"')  # the event as it was sent
        assert real_errors(console.errors) == []


async def test_the_feed_catches_up_on_what_happened_while_the_stream_was_down(tmp_path: Path) -> None:
    """The stream does not replay: an event stored while it was down (a network blip) reaches the feed
    because the page reads the newest events again when the stream is back."""
    from playwright.async_api import expect

    async with running_console(tmp_path, [gate()]) as console:
        stack = console.stack
        await stack.wait_for("/api/v1/devices/east-gate")
        table = await console.open_events("oak-garden")
        page = console.page
        store = "/console/js/store.js"
        await page.evaluate(f"import('{store}').then((m) => m.disconnectStream())")
        await expect(page.locator("#live")).to_have_attribute("data-live", "off")

        r = await stack.http.post("/api/v1/devices/east-gate/commands", json={"action": "open"})
        assert r.status_code == 202, r.text
        await stack.wait_for(
            "/api/v1/events?device_id=east-gate&type=gate.opened", lambda r: len(r.json()["items"]) == 1
        )
        opened = table.locator('tr[data-type="gate.opened"]')
        await expect(opened).to_have_count(0)  # not over the stream: it was down

        await page.evaluate(f"import('{store}').then((m) => m.connectStream())")
        await expect(page.locator("#live")).to_have_attribute("data-live", "on")
        await expect(opened).to_have_count(1)
        assert real_errors(console.errors) == []
