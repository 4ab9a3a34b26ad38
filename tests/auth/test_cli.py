"""`steward cloud create-admin`, `steward keys generate` and the demo's admin, as a newcomer uses them."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from cloud.auth import ensure_demo_admin
from protocol.signing import public_key_b64, read_private_key
from tests.auth.support import served
from tests.cloud.support import cloud_settings


async def steward(*args: str, cwd: Path) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "steward.cli",
        *args,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).parents[2])},
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_create_admin_then_log_in(broker_port: int, sqlite_url: str, tmp_path: Path) -> None:
    code, out = await steward(
        "cloud", "create-admin", "--username", "Alice", "--database-url", sqlite_url, cwd=tmp_path
    )
    assert code == 0, out
    password = out.split("password: ", 1)[1].split()[0]
    code, out = await steward(
        "cloud", "create-admin", "--username", "alice", "--database-url", sqlite_url, cwd=tmp_path
    )
    assert code == 1 and "exists" in out
    code, out = await steward(
        "cloud",
        "create-admin",
        "--username",
        "bob",
        "--password",
        "short",
        "--database-url",
        sqlite_url,
        cwd=tmp_path,
    )
    assert code == 2
    code, out = await steward(
        "cloud", "create-admin", "--username", "bob", "--password", "bobs-long-password",
        "--database-url", sqlite_url, cwd=tmp_path,
    )  # fmt: skip
    assert code == 0 and "password:" not in out
    async with served(cloud_settings(broker_port, sqlite_url)) as c:
        for username, pw in (("alice", password), ("bob", "bobs-long-password")):
            login = await c.http.post("/api/v1/auth/login", json={"username": username, "password": pw})
            assert login.status_code == 200, login.text
            assert login.json()["user"]["role"] == "admin"
        demo_user, demo_password = await ensure_demo_admin(c.settings)
        again_user, again_password = await ensure_demo_admin(c.settings)
        assert demo_user == again_user == "admin" and demo_password != again_password
        old = await c.http.post("/api/v1/auth/login", json={"username": "admin", "password": demo_password})
        assert old.status_code == 401  # each demo run resets it
        new = await c.http.post("/api/v1/auth/login", json={"username": "admin", "password": again_password})
        assert new.status_code == 200


async def test_keys_generate(tmp_path: Path) -> None:
    key_file = tmp_path / "keys" / "signing.pem"
    code, out = await steward("keys", "generate", "--out", str(key_file), cwd=tmp_path)
    assert code == 0, out
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert public_key_b64(read_private_key(key_file)) in out
    code, out = await steward("keys", "generate", "--out", str(key_file), cwd=tmp_path)
    assert code == 1  # never silently replaces the key every gateway trusts
