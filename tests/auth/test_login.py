"""Logging in, tokens (session and API), expiry, revocation, throttling: over real HTTP."""

from __future__ import annotations

import pytest

from cloud.auth import Role
from tests.auth.support import Clock, served
from tests.cloud.support import cloud_settings

PROTECTED = [
    ("GET", "/api/v1/sites"),
    ("GET", "/api/v1/gateways"),
    ("GET", "/api/v1/devices"),
    ("GET", "/api/v1/devices/gate-1"),
    ("GET", "/api/v1/devices/gate-1/readings"),
    ("GET", "/api/v1/events"),
    ("POST", "/api/v1/devices/gate-1/commands"),
    ("GET", "/api/v1/commands/X"),
    ("GET", "/api/v1/commands/X/audit"),
    ("GET", "/api/v1/stream"),
    ("GET", "/api/v1/auth/me"),
    ("GET", "/api/v1/auth/command-key"),
    ("GET", "/api/v1/auth/tokens"),
    ("GET", "/api/v1/auth/users"),
    ("POST", "/api/v1/gateways/register"),
    ("GET", "/api/v1/no-such-route"),  # closed too: the gate runs before routing
]


async def test_login_me_and_no_user_enumeration(broker_port: int, sqlite_url: str) -> None:
    async with served(cloud_settings(broker_port, sqlite_url)) as c:
        me_headers = await c.user("Vera", Role.VIEWER, ["estate-a"])
        login = await c.http.post(
            "/api/v1/auth/login", json={"username": "vera", "password": "pw-Vera-0123456789"}
        )
        body = login.json()
        assert login.status_code == 200
        assert body["token_type"] == "bearer"
        assert body["expires_in"] == 3600
        assert body["user"] == {"username": "vera", "role": "viewer", "sites": ["estate-a"]}
        me = (await c.http.get("/api/v1/auth/me", headers=me_headers)).json()
        assert (me["username"], me["role"], me["sites"], me["all_sites"], me["via"]) == (
            "vera",
            "viewer",
            ["estate-a"],
            False,
            "session",
        )
        assert me["permissions"] == ["read"]

        wrong = await c.http.post("/api/v1/auth/login", json={"username": "vera", "password": "nope"})
        unknown = await c.http.post("/api/v1/auth/login", json={"username": "nobody", "password": "nope"})
        assert wrong.status_code == unknown.status_code == 401
        assert (
            wrong.json()
            == unknown.json()
            == {"error": {"code": "bad_credentials", "message": "invalid username or password"}}
        )
        assert wrong.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(("method", "path"), PROTECTED)
async def test_every_api_route_needs_a_token(
    broker_port: int, sqlite_url: str, method: str, path: str
) -> None:
    async with served(cloud_settings(broker_port, sqlite_url)) as c:
        for headers in (
            {},
            {"Authorization": "Bearer stw_s_forged"},
            {"Authorization": "Basic YWRtaW46YWRtaW4="},
        ):
            resp = await c.http.request(method, path, headers=headers, json={})
            assert resp.status_code == 401, (headers, resp.text)
            assert resp.json()["error"]["code"] == "unauthorized"
            assert resp.headers["www-authenticate"] == "Bearer"
        # ?access_token= is for the event stream only (a token in a URL ends up in logs)
        headers = await c.user("ann", Role.ADMIN)
        token = headers["Authorization"].removeprefix("Bearer ")
        if path != "/api/v1/stream":
            resp = await c.http.request(method, path, params={"access_token": token}, json={})
            assert resp.status_code == 401


async def test_public_routes_need_no_token(broker_port: int, sqlite_url: str) -> None:
    async with served(cloud_settings(broker_port, sqlite_url)) as c:
        assert (await c.http.get("/api/v1/openapi.json")).status_code == 200
        assert (await c.http.get("/api/v1/docs")).status_code == 200
        assert (await c.http.get("/metrics")).status_code == 200  # outside /api/v1, for Prometheus
        spec = (await c.http.get("/api/v1/openapi.json")).json()
        assert "HTTPBearer" in spec["components"]["securitySchemes"]


async def test_session_token_expires_and_logout_revokes(broker_port: int, sqlite_url: str) -> None:
    settings = cloud_settings(broker_port, sqlite_url, access_token_ttl_s=600)
    async with served(settings) as c:
        clock = Clock()
        c.auth.clock = clock
        headers = await c.user("olga", Role.OPERATOR, ["estate-a"])
        assert (await c.http.get("/api/v1/auth/me", headers=headers)).status_code == 200
        clock.advance(599)
        assert (await c.http.get("/api/v1/auth/me", headers=headers)).status_code == 200
        clock.advance(2)
        expired = await c.http.get("/api/v1/auth/me", headers=headers)
        assert (expired.status_code, expired.json()["error"]["code"]) == (401, "unauthorized")

        headers = await c.login_headers("olga", "pw-olga-0123456789")
        assert (await c.http.post("/api/v1/auth/logout", headers=headers)).status_code == 204
        assert (await c.http.get("/api/v1/auth/me", headers=headers)).status_code == 401


async def test_api_token_create_use_list_revoke(broker_port: int, sqlite_url: str) -> None:
    async with served(cloud_settings(broker_port, sqlite_url)) as c:
        clock = Clock()
        c.auth.clock = clock
        olga = await c.user("olga", Role.OPERATOR, ["estate-a"])
        created = await c.http.post("/api/v1/auth/tokens", headers=olga, json={"name": "nightly report"})
        assert created.status_code == 201, created.text
        token = created.json()
        assert token["token"].startswith("stw_a_") and token["expires_at"] is None
        bot = {"Authorization": f"Bearer {token['token']}"}

        clock.advance(86400 * 30)  # API tokens outlive sessions
        me = (await c.http.get("/api/v1/auth/me", headers=bot)).json()
        assert (me["username"], me["role"], me["via"]) == ("olga", "operator", "api")
        assert (await c.http.get("/api/v1/auth/me", headers=olga)).status_code == 401  # session expired

        olga = await c.login_headers("olga", "pw-olga-0123456789")
        admin = await c.user("root", Role.ADMIN)
        listed = (await c.http.get("/api/v1/auth/tokens", headers=olga)).json()
        assert [(t["id"], t["name"]) for t in listed] == [(token["id"], "nightly report")]
        assert "token" not in listed[0]  # shown once, never again
        assert listed[0]["last_used_at"] is not None
        # Another user cannot see or revoke it; an admin can see everyone's.
        vera = await c.user("vera", Role.VIEWER, ["estate-a"])
        assert (await c.http.get("/api/v1/auth/tokens", headers=vera)).json() == []
        assert (await c.http.delete(f"/api/v1/auth/tokens/{token['id']}", headers=vera)).status_code == 404
        assert (
            await c.http.get("/api/v1/auth/tokens", params={"all": True}, headers=vera)
        ).status_code == 403
        everyone = (await c.http.get("/api/v1/auth/tokens", params={"all": True}, headers=admin)).json()
        assert [t["username"] for t in everyone] == ["olga"]

        assert (await c.http.delete(f"/api/v1/auth/tokens/{token['id']}", headers=olga)).status_code == 204
        assert (await c.http.get("/api/v1/auth/me", headers=bot)).status_code == 401

        # Expiring tokens expire; disabling the user stops every token at once.
        short = (
            await c.http.post(
                "/api/v1/auth/tokens", headers=olga, json={"name": "short", "expires_in_days": 1}
            )
        ).json()
        short_h = {"Authorization": f"Bearer {short['token']}"}
        assert (await c.http.get("/api/v1/auth/me", headers=short_h)).status_code == 200
        clock.advance(86401)
        assert (await c.http.get("/api/v1/auth/me", headers=short_h)).status_code == 401
        olga = await c.login_headers("olga", "pw-olga-0123456789")
        admin = await c.login_headers("root", "pw-root-0123456789")
        keep = (await c.http.post("/api/v1/auth/tokens", headers=olga, json={"name": "keep"})).json()
        keep_h = {"Authorization": f"Bearer {keep['token']}"}
        patched = await c.http.patch("/api/v1/auth/users/olga", headers=admin, json={"disabled": True})
        assert (patched.status_code, patched.json()["disabled"]) == (200, True)
        for h in (olga, keep_h):
            assert (await c.http.get("/api/v1/auth/me", headers=h)).status_code == 401
        bad = await c.http.post(
            "/api/v1/auth/login", json={"username": "olga", "password": "pw-olga-0123456789"}
        )
        assert bad.status_code == 401


async def test_login_throttled_per_username_then_reset(broker_port: int, sqlite_url: str) -> None:
    settings = cloud_settings(broker_port, sqlite_url, login_max_failures=3, login_window_s=300)
    async with served(settings) as c:
        clock = Clock()
        c.auth.clock = clock
        await c.user("olga", Role.OPERATOR, ["estate-a"])
        right = {"username": "olga", "password": "pw-olga-0123456789"}
        wrong = {"username": "olga", "password": "guess"}
        # A success clears the count.
        for _ in range(2):
            assert (await c.http.post("/api/v1/auth/login", json=wrong)).status_code == 401
        assert (await c.http.post("/api/v1/auth/login", json=right)).status_code == 200
        for _ in range(3):
            assert (await c.http.post("/api/v1/auth/login", json=wrong)).status_code == 401
        for attempt in (wrong, right, {**right, "username": " OLGA "}):  # even the right password
            blocked = await c.http.post("/api/v1/auth/login", json=attempt)
            assert blocked.status_code == 429
            assert blocked.json()["error"]["code"] == "too_many_attempts"
            assert blocked.headers["retry-after"] == "300"
        clock.advance(120)
        assert (await c.http.post("/api/v1/auth/login", json=right)).headers["retry-after"] == "180"
        clock.advance(181)
        assert (await c.http.post("/api/v1/auth/login", json=right)).status_code == 200
        admin = await c.user("root", Role.ADMIN)
        audit = (await c.http.get("/api/v1/auth/audit", params={"username": "olga"}, headers=admin)).json()
        actions = [a["action"] for a in audit]
        assert actions.count("login_failed") == 5
        assert actions.count("login_throttled") == 4
        assert {a["client_ip"] for a in audit} == {"127.0.0.1"}


async def test_login_throttled_per_client_address(broker_port: int, sqlite_url: str) -> None:
    settings = cloud_settings(
        broker_port, sqlite_url, login_max_failures=10, login_max_failures_per_ip=4, login_window_s=60
    )
    async with served(settings) as c:
        clock = Clock()
        c.auth.clock = clock
        for name in ("a1", "a2", "a3", "a4"):  # a password spray: one guess per username
            resp = await c.http.post("/api/v1/auth/login", json={"username": name, "password": "Winter2026!"})
            assert resp.status_code == 401
        sprayed = await c.http.post("/api/v1/auth/login", json={"username": "a5", "password": "Winter2026!"})
        assert (sprayed.status_code, sprayed.headers["retry-after"]) == (429, "60")
        clock.advance(61)
        assert (
            await c.http.post("/api/v1/auth/login", json={"username": "a5", "password": "x"})
        ).status_code == 401


async def test_admin_manages_users(broker_port: int, sqlite_url: str) -> None:
    async with served(cloud_settings(broker_port, sqlite_url)) as c:
        admin = await c.user("root", Role.ADMIN)
        made = await c.http.post(
            "/api/v1/auth/users",
            headers=admin,
            json={"username": "ian", "role": "installer", "sites": ["estate-a"]},
        )
        assert made.status_code == 201, made.text
        password = made.json()["password"]
        assert len(password) >= 16
        ian = await c.login_headers("ian", password)
        assert (await c.http.get("/api/v1/auth/users", headers=ian)).status_code == 403
        dup = await c.http.post(
            "/api/v1/auth/users",
            headers=admin,
            json={"username": "ian", "role": "viewer", "password": "x" * 12},
        )
        assert dup.status_code == 409
        short = await c.http.post(
            "/api/v1/auth/users",
            headers=admin,
            json={"username": "sam", "role": "viewer", "password": "short"},
        )
        assert short.status_code == 422
        changed = await c.http.patch(
            "/api/v1/auth/users/ian",
            headers=admin,
            json={"password": "a-new-long-password", "sites": ["estate-b"]},
        )
        assert changed.json()["sites"] == ["estate-b"]
        assert (await c.http.get("/api/v1/auth/me", headers=ian)).status_code == 401  # sessions ended
        assert await c.login_headers("ian", "a-new-long-password")
        me = await c.http.patch("/api/v1/auth/users/root", headers=admin, json={"role": "viewer"})
        assert me.status_code == 409  # no locking yourself out
        names = [u["username"] for u in (await c.http.get("/api/v1/auth/users", headers=admin)).json()]
        assert names == ["ian", "root"]


async def test_revocation_elsewhere_takes_effect_here_within_a_second(
    broker_port: int, sqlite_url: str
) -> None:
    """One instance trusts a token it has just checked for up to a second (a command's POST and
    long-polls come in bursts); a revocation by another instance or the CLI, straight in the store,
    is refused here once that second is over. Revocations through this instance apply at once (above)."""
    import asyncio

    from sqlalchemy import update

    from cloud.auth.tables import TokenRow

    async with served(cloud_settings(broker_port, sqlite_url)) as c:
        headers = await c.user("olga", Role.OPERATOR, ["estate-a"])
        assert (await c.http.get("/api/v1/auth/me", headers=headers)).status_code == 200
        async with c.auth.sessions() as session, session.begin():
            await session.execute(update(TokenRow).values(revoked_at=c.auth.clock()))
        await asyncio.sleep(1.1)
        assert (await c.http.get("/api/v1/auth/me", headers=headers)).status_code == 401
