"""What fuzzing the HTTP API (``test_api_schemathesis.py``) found, kept as plain regression tests.

Each test is named after the bug it pins down, so it stays covered whatever schemathesis generates.
The cloud is the real one (uvicorn on a loopback port, embedded broker, SQLite), called over HTTP.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cloud import CloudSettings, create_app
from tests.cloud.support import RunningCloud, cloud_settings, embedded_broker, running_cloud

ERROR_REF = {"$ref": "#/components/schemas/ErrorOut"}


def _spec() -> dict[str, Any]:
    spec: dict[str, Any] = create_app(CloudSettings(database_url="sqlite+aiosqlite:///:memory:")).openapi()
    return spec


def _operations() -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, op)
        for path, ops in _spec()["paths"].items()
        for method, op in ops.items()
        if method in ("get", "post", "put", "patch", "delete")
    ]


def _is_error(body: Any) -> bool:
    return (
        isinstance(body, dict)
        and set(body) == {"error"}
        and isinstance(body["error"].get("code"), str)
        and isinstance(body["error"].get("message"), str)
    )


@pytest.fixture
async def cloud(tmp_path: Path) -> AsyncIterator[RunningCloud]:
    db = f"sqlite+aiosqlite:///{tmp_path / 'cloud.db'}"
    async with embedded_broker() as port, running_cloud(cloud_settings(port, db)) as c:
        yield c


# ---- the document -------------------------------------------------------------------------------
def test_401_is_documented_on_every_operation_behind_the_auth_gate() -> None:
    """Found: work order routes answered 401 (the auth gate) without documenting it."""
    secured = [(m, p, op) for m, p, op in _operations() if op.get("security")]
    assert len(secured) > 30
    for method, path, op in secured:
        doc = op["responses"].get("401")
        assert doc is not None, f"{method} {path} does not document 401"
        assert doc["content"]["application/json"]["schema"] == ERROR_REF, f"{method} {path}"


def test_422_documents_the_stable_error_shape_not_fastapis() -> None:
    """FastAPI documents 422 as ``HTTPValidationError`` (``{"detail": [...]}``); we answer ``ErrorOut``."""
    spec = _spec()
    for method, path, op in _operations():
        doc = op["responses"].get("422")
        if doc is not None:
            assert doc["content"]["application/json"]["schema"] == ERROR_REF, f"{method} {path}"
    assert "HTTPValidationError" not in spec["components"]["schemas"]


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("POST", "/api/v1/auth/users", "409"),
        ("PATCH", "/api/v1/auth/users/{username}", "404"),
        ("PATCH", "/api/v1/auth/users/{username}", "409"),
        ("POST", "/api/v1/gateways/register", "409"),
        ("GET", "/api/v1/work-orders/{work_order_id}", "403"),
    ],
)
def test_error_statuses_the_handlers_raise_are_documented(method: str, path: str, status: str) -> None:
    """Found: creating an existing user (409) and patching a missing one (404) were undocumented."""
    op = _spec()["paths"][path][method.lower()]
    assert op["responses"][status]["content"]["application/json"]["schema"] == ERROR_REF


# ---- the answers --------------------------------------------------------------------------------
async def test_every_operation_without_a_token_is_401_with_the_error_body(cloud: RunningCloud) -> None:
    async with httpx.AsyncClient(base_url=str(cloud.http.base_url), timeout=10) as anonymous:
        for method, path, op in _operations():
            if not op.get("security"):
                continue
            url = path.replace("{", "x").replace("}", "")  # any id will do: the gate answers first
            for headers in ({}, {"Authorization": "Bearer stw_s_not-a-real-token"}):
                r = await anonymous.request(method, url, headers=headers)
                assert r.status_code == 401, f"{method} {path}: {r.status_code} {r.text}"
                assert _is_error(r.json()), f"{method} {path}: {r.text}"


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/devices/gate-1/commands",
        "/api/v1/auth/tokens",
        "/api/v1/auth/users",
        "/api/v1/gateways/register",
        "/api/v1/work-orders",
    ],
)
async def test_body_that_is_not_utf8_is_422_invalid_request_not_an_undocumented_400(
    cloud: RunningCloud, path: str
) -> None:
    """Found: a body FastAPI cannot even decode was a 400 ``http_error``, documented nowhere."""
    r = await cloud.http.post(path, content=b"l\xa3>\x80\xff", headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "invalid_request"
    assert "JSON" in r.json()["error"]["message"]
    # Malformed JSON that is text gets the same answer.
    r = await cloud.http.post(path, content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "invalid_request"


@pytest.mark.parametrize("work_order_id", ["3616506660924396929024", str(2**63), "0", "-1"])
async def test_work_order_id_beyond_a_sql_integer_is_422_not_a_500(
    cloud: RunningCloud, work_order_id: str
) -> None:
    """Found: ``GET /work-orders/<huge int>`` overflowed in the SQLite driver: 500."""
    r = await cloud.http.get(f"/api/v1/work-orders/{work_order_id}")
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "invalid_request"
    r = await cloud.http.post(f"/api/v1/work-orders/{work_order_id}/transitions", json={"to": "assigned"})
    assert r.status_code == 422, r.text
    # The largest id that fits is simply not there.
    r = await cloud.http.get(f"/api/v1/work-orders/{2**63 - 1}")
    assert r.status_code == 404, r.text
    assert r.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize("site", ["\U000f5765åc\x89", 'a"; filename="x.exe', "a\r\nSet-Cookie: x=1", "é"])
async def test_csv_report_for_a_site_name_unfit_for_a_header_is_422_not_a_500(
    cloud: RunningCloud, site: str
) -> None:
    """Found: the CSV report names its file after ``site`` in Content-Disposition; a site that is not
    latin-1 crashed the response (500), and quotes could have rewritten the header."""
    r = await cloud.http.get("/api/v1/reports/work-orders", params={"site": site, "format": "csv"})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "invalid_request"
    assert "content-disposition" not in r.headers
    ok = await cloud.http.get("/api/v1/reports/work-orders", params={"site": "estate-a", "format": "csv"})
    assert ok.status_code == 200, ok.text
    assert ok.headers["content-disposition"] == 'attachment; filename="work-orders-estate-a.csv"'
