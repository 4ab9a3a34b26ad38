"""`make demo` as a newcomer runs it: the scripted hour passes, and Ctrl-C leaves nothing running."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from steward.broker import free_port

ROOT = Path(__file__).parent.parent
CONFIG = ROOT / "config" / "demo-site.yaml"
DEMO_PORTS = [18830, 15020, 15021, 15022, 15023]

pytestmark = pytest.mark.timeout(240)


def port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture(autouse=True)
def _demo_ports_free() -> None:
    busy = [p for p in DEMO_PORTS if not port_free(p)]
    if busy:
        pytest.skip(f"demo ports in use by something else: {busy}")


def steward(*args: str) -> list[str]:
    return [sys.executable, "-m", "steward.cli", *args]


def test_scenario_plays_and_passes(tmp_path: Path) -> None:
    http = free_port()
    proc = subprocess.run(
        steward("demo", "--config", str(CONFIG), "--scenario", "--http-port", str(http)),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=200,
        check=False,
    )
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr[-3000:]
    assert "All checks passed." in out
    assert "FIRE ALARM (火警)" in out
    assert "closing a gate during a fire alarm is refused" in out
    assert "FAILED" not in out
    assert all(port_free(p) for p in DEMO_PORTS)


def test_demo_prints_how_to_open_a_gate_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    http = free_port()
    proc = subprocess.Popen(
        steward("demo", "--config", str(CONFIG), "--http-port", str(http)),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "Stop: Ctrl-C" in line:
                break
        text = "".join(lines)
        assert f"curl -s -X POST http://127.0.0.1:{http}/api/v1/devices/east-gate-in/commands" in text, text
        # What it prints works: sign in with the password shown, send the open it shows, read the log.
        (password,) = re.findall(r"Log in as 'admin', password '([^']+)'", text)
        (body,) = re.findall(r"-d '(\{\"action\": \"open\".*?\})'", text)
        base = f"http://127.0.0.1:{http}/api/v1"
        with httpx.Client(base_url=base, timeout=30) as http_client:
            login = http_client.post("/auth/login", json={"username": "admin", "password": password})
            auth = {"Authorization": f"Bearer {login.json()['access_token']}"}
            sent = http_client.post(
                "/devices/east-gate-in/commands", params={"wait": 20}, json=json.loads(body), headers=auth
            )
            assert sent.status_code in (200, 202), sent.text
            assert sent.json()["status"] == "succeeded", sent.json()
            (logged,) = http_client.get("/commands", headers=auth).json()["items"]
            assert (logged["id"], logged["reason"]) == (sent.json()["id"], json.loads(body)["reason"])
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert all(port_free(p) for p in [*DEMO_PORTS, http]), "something is still listening after Ctrl-C"
