"""A whole Steward (tests.stack) plus Debian's chromium driven by Playwright, for console tests.

Never ``playwright install``: the browser is the system's ``/usr/bin/chromium`` (CI installs it in
``.ci/run``); tests skip with the reason when it or the ``playwright`` package is missing.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from steward.broker import free_port
from tests.stack import Stack, running_stack

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "artifacts"
UI_TIMEOUT_MS = 15_000  # every wait on the page: the stack is real, so allow for a slow CI machine


def browser_missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if importlib.util.find_spec("playwright") is None:
        return "the playwright package is not installed (pip install -e '.[dev]')"
    if not (CHROMIUM.exists() and os.access(CHROMIUM, os.X_OK)):
        return f"{CHROMIUM} is missing (apt-get install -y chromium; .ci/run does it in CI)"
    return None


needs_browser = pytest.mark.skipif(browser_missing() is not None, reason=browser_missing() or "")


def gate(device_id: str = "east-gate", port: int | None = None, name: str | None = None) -> dict[str, Any]:
    return {
        "id": device_id,
        **({"name": name} if name else {}),
        "kind": "barrier_gate",
        "model": "io-module",
        "transport": {
            "type": "modbus_tcp",
            "host": "127.0.0.1",
            "port": port or free_port(),
            "unit": 1,
            "timeout_s": 0.5,
        },
        "poll_interval_s": 0.1,
        "location": {"lane": "east entrance in"},
    }


def door(device_id: str = "door-b1-lobby") -> dict[str, Any]:
    return {
        "id": device_id,
        "kind": "door_access",
        "model": "mqtt-controller",
        "transport": {"type": "mqtt", "topic_base": f"test/doors/{device_id}"},
        "location": {"building": "1", "unit": "1", "area": "lobby"},
    }


def intercom(device_id: str = "intercom-b1") -> dict[str, Any]:
    return {
        "id": device_id,
        "kind": "video_intercom",
        "model": "mqtt-door-station",
        "transport": {"type": "mqtt", "topic_base": f"test/intercom/{device_id}"},
        "location": {"building": "1", "area": "lobby"},
    }


def fire_panel(device_id: str = "fire-panel", port: int | None = None) -> dict[str, Any]:
    return {
        "id": device_id,
        "kind": "fire_panel",
        "model": "modbus-gateway",
        "transport": {"type": "modbus_tcp", "host": "127.0.0.1", "port": port or free_port(), "unit": 1},
        "poll_interval_s": 0.1,
        "location": {"area": "fire control room"},
        "options": {"zones": 4, "zone_names": {"1": "Building 1 lobby"}},
    }


def meter(device_id: str = "meter-b1", port: int | None = None) -> dict[str, Any]:
    return {
        "id": device_id,
        "kind": "smart_meter",
        "model": "sdm120",
        "transport": {"type": "modbus_tcp", "host": "127.0.0.1", "port": port or free_port(), "unit": 1},
        "poll_interval_s": 0.5,
        "location": {"building": "1", "unit": "1", "apartment": "1202"},
    }


@dataclass
class Console:
    stack: Stack
    page: Any  # playwright.async_api.Page
    base: str
    errors: list[str]

    async def open(self, credentials: tuple[str, str] | None = None) -> None:
        """Load the console and sign in when the server asks for it (no sign-in yet: straight in).
        Default credentials: the stack's admin."""
        from playwright.async_api import expect

        if credentials is None and getattr(self.stack, "admin_password", ""):
            credentials = ("admin", self.stack.admin_password)
        await self.page.goto(f"{self.base}/", timeout=UI_TIMEOUT_MS)
        sites = self.page.locator("#site-list")
        login = self.page.get_by_role("button", name="Sign in")
        await expect(sites.or_(login)).to_be_visible(timeout=UI_TIMEOUT_MS)
        if await login.is_visible():
            if credentials is None:
                raise AssertionError("the server asks for sign-in but the test gave no credentials")
            await self.page.get_by_label("Username").fill(credentials[0])
            await self.page.get_by_label("Password").fill(credentials[1])
            await login.click()
        await expect(sites).to_be_visible(timeout=UI_TIMEOUT_MS)

    async def open_site(self, site_id: str) -> None:
        from playwright.async_api import expect

        await self.page.locator(f'#site-list li[data-site="{site_id}"] a.button').click()
        await expect(self.page.locator("#live")).to_have_attribute("data-live", "on", timeout=UI_TIMEOUT_MS)

    async def open_events(self, site_id: str) -> Any:
        """Sign in, open the estate and its Events page; the feed table's body (a playwright Locator)."""
        await self.open()
        await self.open_site(site_id)
        await self.page.get_by_role("link", name="Events").click()
        return self.page.locator("#event-table tbody")


async def auth_available(stack: Stack) -> bool:
    r = await stack.http.post("/api/v1/auth/login", json={"username": "-", "password": "-"})
    return r.status_code != 404


async def work_orders_available(stack: Stack) -> bool:
    r = await stack.http.get("/api/v1/work-orders")
    return r.status_code != 404


@contextlib.asynccontextmanager
async def running_console(
    tmp_path: Path, devices: list[dict[str, Any]], **stack_options: Any
) -> AsyncIterator[Console]:
    """A stack on real sockets and a fresh headless chromium on its console; page errors are collected."""
    from playwright.async_api import async_playwright

    async with running_stack(tmp_path, devices, **stack_options) as stack, async_playwright() as pw:
        context = await pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 900},
            locale="en-GB",
            timezone_id="UTC",
        )
        try:
            context.set_default_timeout(UI_TIMEOUT_MS)
            page = context.pages[0] if context.pages else await context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            yield Console(stack, page, f"http://127.0.0.1:{stack.cloud_settings.http_port}", errors)
        finally:
            await context.close()


def real_errors(errors: list[str]) -> list[str]:
    # A 404 from feature detection (an API not built yet) is logged by the browser; it is not a fault.
    return [e for e in errors if "Failed to load resource" not in e]
