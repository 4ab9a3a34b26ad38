"""The operator console in a real browser against the real cloud: the site board and its live state."""

from __future__ import annotations

from pathlib import Path

from tests.console.support import (
    ARTIFACTS,
    UI_TIMEOUT_MS,
    door,
    gate,
    intercom,
    needs_browser,
    real_errors,
    running_console,
)
from tests.stack import Stack

pytestmark = needs_browser


async def command(stack: Stack, device_id: str, action: str) -> dict:
    r = await stack.http.post(f"/api/v1/devices/{device_id}/commands", json={"action": action})
    assert r.status_code == 202, r.text
    done = await stack.wait_for(f"/api/v1/commands/{r.json()['id']}?wait=5", lambda r: r.json()["final"])
    assert done.json()["status"] == "succeeded", done.json()
    return done.json()


async def closed_gate(stack: Stack, device_id: str = "east-gate") -> None:
    """A gate's first position is a baseline the gateway does not report: cycle it so the cloud knows."""
    await stack.wait_for(f"/api/v1/devices/{device_id}")
    await command(stack, device_id, "open")
    await command(stack, device_id, "close")
    await stack.wait_for(
        f"/api/v1/devices/{device_id}",
        lambda r: r.json()["state"].get("gate", {}).get("value") == "closed",
    )


async def test_open_a_closed_gate_from_the_board(tmp_path: Path) -> None:
    from playwright.async_api import expect

    named = gate(name="East entrance, inbound (东门入口道闸)")
    async with running_console(tmp_path, [named, door(), intercom()]) as console:
        stack = console.stack
        await closed_gate(stack)
        await console.open()
        await console.open_site("oak-garden")
        page = console.page

        card = page.locator("#device-east-gate")
        await expect(card).to_have_attribute("data-gate", "closed")
        await expect(card.locator(".badge.main")).to_have_text("closed")
        await expect(card.locator('[data-value="online"]')).to_be_visible()

        # The operator confirms the gate people know by name, its id beside it.
        card_title = "East entrance, inbound (东门入口道闸) (east-gate)"
        await expect(card.locator("h3")).to_contain_text(card_title)
        await card.get_by_role("button", name="Open gate").click()
        dialog = page.get_by_role("dialog")
        await expect(dialog).to_contain_text("Open gate: East entrance, inbound (东门入口道闸) (east-gate)")
        # Whom the gate opens for goes into the command's audit trail, and must be said.
        await dialog.get_by_role("button", name="Open gate").click()
        await expect(dialog).to_be_visible()
        assert stack.sims["east-gate"].state()["state"] == "closed"  # nothing sent
        await dialog.get_by_label("Why").select_option("delivery")
        await dialog.get_by_label("Apartment, plate or note").fill("  SF Express van for 1-1-1202 ")
        await dialog.get_by_role("button", name="Open gate").click()
        await expect(dialog).to_be_hidden()

        # The outcome follows the command to its final state; the position comes from the live stream.
        await expect(card.locator(".outcome")).to_have_attribute(
            "data-status", "succeeded", timeout=UI_TIMEOUT_MS
        )
        await expect(card).to_have_attribute("data-gate", "open")
        await expect(card.locator(".badge.main")).to_have_text("open")
        assert stack.sims["east-gate"].state()["state"] == "open"
        log = page.locator("#command-log")
        await expect(log).to_contain_text("Open gate — succeeded")
        # Named as the card is: the log says which gate, in the words people use.
        await expect(log.locator("li strong").first).to_have_text(card_title)
        why = "delivery: SF Express van for 1-1-1202"
        await expect(log.locator("li .why").first).to_have_text(f" · for {why}")
        (sent,) = (await stack.http.get("/api/v1/commands", params={"action": "open", "issued_by": "admin",
                                                                    "limit": 1})).json()["items"]  # fmt: skip
        assert sent["reason"] == why
        trail = (await stack.http.get(f"/api/v1/commands/{sent['id']}/audit")).json()
        assert {row["reason"] for row in trail if row["status"] == "pending"} == {why}

        # A visitor calling too, so the board's artifact shows the intercom queue beside the gates.
        await stack.sims["intercom-b1"].call("apartment", "1-1-1202")
        await expect(page.locator("#call-queue .call")).to_have_count(1)

        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "console-board.png"), full_page=True)
        assert real_errors(console.errors) == []


async def test_switch_to_chinese(tmp_path: Path) -> None:
    from playwright.async_api import expect

    async with running_console(tmp_path, [gate(), door()]) as console:
        await console.stack.wait_for("/api/v1/devices/east-gate")
        await console.open()
        await console.open_site("oak-garden")
        page = console.page
        card = page.locator("#device-east-gate")
        await expect(card.get_by_role("button", name="Open gate")).to_be_visible()

        await page.get_by_role("button", name="中文").click()
        await expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
        await expect(page.get_by_role("heading", name="道闸与门禁")).to_be_visible()
        await expect(page.get_by_role("heading", name="道闸", exact=True)).to_be_visible()
        await expect(card.locator(".kind")).to_have_text("道闸")
        await expect(card.get_by_role("button", name="开闸")).to_be_visible()
        await expect(page.locator("#device-door-b1-lobby").get_by_role("button", name="开门")).to_be_visible()
        await expect(page.get_by_role("link", name="事件")).to_be_visible()

        # The choice is remembered, and English is one click away.
        await page.reload()
        await expect(page.get_by_role("heading", name="道闸与门禁")).to_be_visible()
        await page.get_by_role("button", name="English").click()
        await expect(page.get_by_role("heading", name="Gates and doors")).to_be_visible()
        assert real_errors(console.errors) == []


async def test_the_log_shows_what_colleagues_did_before_and_after_the_page_opened(tmp_path: Path) -> None:
    from playwright.async_api import expect

    from cloud.auth import Role, create_user

    async with running_console(tmp_path, [gate(), door()]) as console:
        stack = console.stack
        await closed_gate(stack)
        password = await create_user(stack.cloud_settings, "wang", role=Role.OPERATOR, sites=["oak-garden"])
        login = await stack.http.post("/api/v1/auth/login", json={"username": "wang", "password": password})
        colleague = {"Authorization": f"Bearer {login.json()['access_token']}"}

        async def colleague_does(device_id: str, action: str) -> None:
            r = await stack.http.post(
                f"/api/v1/devices/{device_id}/commands?wait=5", json={"action": action}, headers=colleague
            )
            assert (r.status_code, r.json()["status"]) == (202, "succeeded"), r.text

        # Before this operator opens the estate, a colleague holds the lobby door unlocked.
        await colleague_does("door-b1-lobby", "hold_unlocked")
        await console.open()
        await console.open_site("oak-garden")
        page = console.page
        log = page.locator("#command-log li")
        # The cycle the test made as admin, then the colleague's: newest first, each with who sent it.
        await expect(log).to_have_count(3)
        await expect(log.nth(0)).to_contain_text("Hold open — succeeded")
        await expect(log.nth(0)).to_contain_text("by wang")
        await expect(log.nth(1)).to_contain_text("Close gate — succeeded")
        await expect(log.nth(1)).to_contain_text("by admin")
        lobby = page.locator("#device-door-b1-lobby")
        await expect(lobby).to_have_attribute("data-lock", "unlocked")
        await expect(lobby.locator(".last-command")).to_contain_text("by wang")

        # While the page is open: the colleague opens the gate; the log and the card follow at once.
        await colleague_does("east-gate", "open")
        await expect(log).to_have_count(4)
        await expect(log.nth(0)).to_contain_text("Open gate — succeeded")
        await expect(log.nth(0)).to_contain_text("by wang")
        card = page.locator("#device-east-gate")
        await expect(card).to_have_attribute("data-gate", "open")
        await expect(card.locator(".last-command")).to_contain_text("Open gate — succeeded")

        # A reload keeps the log: it comes from the cloud, not from this page's memory.
        await page.reload()
        await expect(log).to_have_count(4)
        await expect(log.nth(0)).to_contain_text("by wang")
        assert real_errors(console.errors) == []


async def test_the_estate_list_shows_a_gateway_going_offline_and_back(tmp_path: Path) -> None:
    from playwright.async_api import expect

    async with running_console(tmp_path, [gate()], link=True) as console:
        stack = console.stack
        await stack.wait_for("/api/v1/devices/east-gate")
        await console.open()
        estate = console.page.locator('#site-list li[data-site="oak-garden"]')
        await expect(estate).to_have_attribute("data-gateways-offline", "0")
        await expect(estate.locator(".gateways")).to_contain_text("gateways online (1)")

        # The link drops: the broker gives the gateway's Last Will, the list says so without a reload.
        assert stack.link is not None
        await stack.link.cut()
        await expect(estate).to_have_attribute("data-gateways-offline", "1", timeout=UI_TIMEOUT_MS)
        await expect(estate.locator(".gateways")).to_contain_text("1 of 1 gateways OFFLINE")

        await stack.link.restore()
        await expect(estate).to_have_attribute("data-gateways-offline", "0", timeout=UI_TIMEOUT_MS)
        assert real_errors(console.errors) == []
