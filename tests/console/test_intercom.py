"""Intercom calls reach the console's queue from the live stream; answering unlocks with one command."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.console.support import UI_TIMEOUT_MS, door, gate, intercom, needs_browser, running_console

pytestmark = needs_browser


async def test_answer_a_call_and_unlock(tmp_path: Path) -> None:
    from playwright.async_api import expect

    async with running_console(tmp_path, [gate(), door(), intercom()]) as console:
        stack = console.stack
        await stack.wait_for("/api/v1/devices/intercom-b1")
        await console.open()
        await console.open_site("oak-garden")
        page = console.page
        queue = page.locator("#call-queue")
        await expect(queue).to_contain_text("No one is calling.")

        sim = stack.sims["intercom-b1"]
        call_id = await sim.call("apartment", "1-1-1202")
        call = page.locator(f'#call-queue li[data-call="{call_id}"]')
        await expect(call).to_contain_text("Door station: intercom-b1")
        await expect(call).to_contain_text("Apartment: 1-1-1202")
        await expect(call).to_contain_text("Building 1, lobby")

        await call.get_by_role("button", name="Answer & unlock").click()
        dialog = page.get_by_role("dialog")
        await expect(dialog).to_contain_text("intercom-b1 → 1-1-1202")
        await dialog.get_by_role("button", name="Answer & unlock").click()

        # Done: the door station was told once to unlock, and the call leaves the queue.
        log = page.locator('#command-log li[data-device="intercom-b1"]')
        await expect(log.locator(".outcome")).to_have_attribute(
            "data-status", "succeeded", timeout=UI_TIMEOUT_MS
        )
        await expect(log).to_contain_text("Unlock door — succeeded")
        await expect(call).to_have_count(0)
        await expect(queue).to_contain_text("No one is calling.")
        await expect(page.locator("#notice")).to_contain_text("Door released for 1-1-1202")
        assert sim.unlocks == 1
        assert sim.door_unlocked

        # The call itself is in the event feed, in words.
        await page.get_by_role("link", name="Events").click()
        await expect(page.locator('#event-table tr[data-type="intercom.call_started"]')).to_contain_text(
            "visitor calling"
        )


async def test_a_call_that_ends_leaves_the_queue(tmp_path: Path) -> None:
    from playwright.async_api import expect

    async with running_console(tmp_path, [intercom()]) as console:
        await console.stack.wait_for("/api/v1/devices/intercom-b1")
        sim = console.stack.sims["intercom-b1"]
        # A call already waiting before the page opens is found in the stored events.
        first = await console.stack.sims["intercom-b1"].call("centre")
        await console.stack.wait_for(
            "/api/v1/events?type=intercom.call_started", lambda r: len(r.json()["items"]) == 1
        )
        await console.open()
        await console.open_site("oak-garden")
        page = console.page
        item = page.locator(f'#call-queue li[data-call="{first}"]')
        await expect(item).to_contain_text("to the operations centre")

        await sim.hang_up()
        await expect(item).to_have_count(0)
        assert sim.unlocks == 0


async def test_a_reload_that_read_before_a_call_ended_does_not_bring_it_back(tmp_path: Path) -> None:
    """The board reads the calls again when it is drawn and when the stream comes back; a read that left
    before the call ended, answered after the stream said so, must not put the call back in the queue."""
    from playwright.async_api import Route, expect

    async with running_console(tmp_path, [intercom()]) as console:
        stack = console.stack
        await stack.wait_for("/api/v1/devices/intercom-b1")
        sim = stack.sims["intercom-b1"]
        await console.open()
        await console.open_site("oak-garden")
        page = console.page
        call_id = await sim.call("centre")
        item = page.locator(f'#call-queue li[data-call="{call_id}"]')
        await expect(item).to_have_count(1)

        hang_up_done, all_out = asyncio.Event(), asyncio.Event()
        held: list[asyncio.Task[None]] = []

        async def late(route: Route) -> None:
            response = await route.fetch()  # read now, while the call is still on
            await asyncio.wait_for(hang_up_done.wait(), 10)
            await route.fulfill(response=response)

        async def hold(route: Route) -> None:
            held.append(asyncio.ensure_future(late(route)))
            if len(held) == 4:  # one read per call event type
                all_out.set()

        await page.route("**/api/v1/events?*", hold)
        await page.get_by_role("link", name="Events").click()
        await page.get_by_role("link", name="Board").click()
        await expect(item).to_have_count(1)
        # The board's reads are out; they answer after the hang-up.
        await asyncio.wait_for(all_out.wait(), 5)
        await sim.hang_up()
        await expect(item).to_have_count(0)  # from the stream
        hang_up_done.set()
        await asyncio.gather(*held)
        await page.unroute("**/api/v1/events?*")
        await page.wait_for_timeout(
            500
        )  # the late answers are handled (nothing to wait on: they change nothing)
        await expect(item).to_have_count(0)


async def test_a_result_before_the_posts_answer_shows_once_and_ends_the_call(tmp_path: Path) -> None:
    """The stream can bring a command's result before the POST that issued it has answered (the gateway
    is fast, the answer slow): the console holds it until it knows the command is its own."""
    from playwright.async_api import Route, expect

    async with running_console(tmp_path, [intercom()]) as console:
        stack = console.stack
        await stack.wait_for("/api/v1/devices/intercom-b1")
        await console.open()
        await console.open_site("oak-garden")
        page = console.page
        answered = asyncio.Event()

        async def slow_answer(route: Route) -> None:
            response = await route.fetch()
            await asyncio.wait_for(answered.wait(), 10)
            await route.fulfill(response=response)

        await page.route("**/api/v1/devices/*/commands", slow_answer)
        sim = stack.sims["intercom-b1"]
        call_id = await sim.call("apartment", "1-1-1202")
        call = page.locator(f'#call-queue li[data-call="{call_id}"]')
        await call.get_by_role("button", name="Answer & unlock").click()
        await page.get_by_role("dialog").get_by_role("button", name="Answer & unlock").click()

        # The door is open and the cloud has the result (so has the stream) while the POST still waits.
        await stack.wait_for("/api/v1/commands?status=succeeded", lambda r: len(r.json()["items"]) == 1)
        log = page.locator('#command-log li[data-device="intercom-b1"]')
        await page.wait_for_timeout(300)
        await expect(log).to_have_count(1)
        await expect(log.locator(".outcome")).to_have_attribute("data-status", "pending")

        answered.set()
        outcome = log.locator(".outcome")
        await expect(outcome).to_have_attribute("data-status", "succeeded", timeout=UI_TIMEOUT_MS)
        await expect(log).to_have_count(1)
        await expect(call).to_have_count(0)
        await expect(page.locator("#notice")).to_contain_text("Door released for 1-1-1202")
        assert sim.unlocks == 1
