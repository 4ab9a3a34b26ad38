"""``/api/v1/gateways/{gateway_id}/commissioning``: upload a commissioning report, read the latest and
the history.

Uploading needs ``commission`` at the gateway's site (installers of that site, admins); reading needs
``read`` there. The gateway must exist (registration creates it), and the report must be about it.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from pydantic import ValidationError
from sqlalchemy import select

from cloud.api.deps import ServicesDep
from cloud.auth.deps import CurrentUser, require_site
from cloud.auth.permissions import Permission
from cloud.commissioning.schemas import (
    MAX_REPORT_BYTES,
    CommissioningOut,
    CommissioningReport,
    ReportOut,
    ReportSummary,
    UploadOut,
)
from cloud.commissioning.tables import CommissioningReportRow
from cloud.errors import CloudError, NotFound
from cloud.schemas import ErrorOut
from cloud.store import foreign_devices
from cloud.tables import Gateway
from protocol.models import utcnow

__all__ = ["router"]

router = APIRouter(tags=["commissioning"])
GatewayId = Annotated[str, Path(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut} for code in (400, 401, 403, 404, 413, 422)
}


class TooLarge(CloudError):
    status = 413
    code = "too_large"


class InvalidReport(CloudError):
    status = 422
    code = "invalid_report"


async def _body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it passes ``limit``: FastAPI would read any size into
    memory before validating, so the route reads the stream itself."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"the report is {int(declared)} bytes; the limit is {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"the report is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _problems(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors(include_url=False)
    )[:2000]


async def _gateway(services: Any, gateway_id: str) -> Gateway:
    async with services.read_sessions() as session:
        gateway = await session.get(Gateway, gateway_id)
    if gateway is None:
        raise NotFound(f"no gateway {gateway_id!r}; register it first (steward commission register)")
    return gateway  # type: ignore[no-any-return]


def _summary(row: CommissioningReportRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "uploaded_at": row.uploaded_at,
        "uploaded_by": row.uploaded_by,
        "installer": row.installer,
        "generated_at": row.generated_at,
        "complete": row.complete,
        "devices": row.devices,
        "devices_complete": row.devices_complete,
    }


@router.post(
    "/gateways/{gateway_id}/commissioning",
    status_code=201,
    response_model=UploadOut,
    responses=_ERRORS,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/CommissioningReport"}}},
        }
    },
)
async def upload_report(
    gateway_id: GatewayId, request: Request, user: CurrentUser, services: ServicesDep
) -> UploadOut:
    """Store a commissioning report for the gateway (``steward commission report --upload``). Every
    upload is kept; ``GET`` shows the newest. At most 4 MiB."""
    gateway = await _gateway(services, gateway_id)
    # Who may upload is settled before the body is read, so nobody else can make us read megabytes.
    require_site(user, gateway.site_id, Permission.COMMISSION)
    raw = await _body(request, MAX_REPORT_BYTES)
    try:
        report = CommissioningReport.model_validate_json(raw)
    except ValidationError as exc:
        raise InvalidReport(f"not a commissioning report: {_problems(exc)}") from None
    if (report.site_id, report.gateway_id) != (gateway.site_id, gateway.id):
        raise InvalidReport(
            f"the report is about gateway {report.gateway_id!r} at site {report.site_id!r}, "
            f"not {gateway.id!r} at {gateway.site_id!r}"
        )
    row = CommissioningReportRow(
        gateway_id=gateway.id,
        site_id=gateway.site_id,
        uploaded_by=user.username,
        uploaded_at=utcnow(),
        installer=report.installer,
        generated_at=report.generated_at,
        complete=report.complete,
        devices=len(report.devices),
        devices_complete=sum(d.complete for d in report.devices),
        report=report.model_dump(mode="json"),
    )
    async with services.sessions() as session, session.begin():
        session.add(row)
        taken = list(await foreign_devices(session, gateway.site_id, (d.id for d in report.devices)))
    auth = services.extras.get("auth")
    if auth is not None:
        await auth.audit(
            "commissioning_uploaded",
            username=user.username,
            site_id=gateway.site_id,
            permission=str(Permission.COMMISSION),
            client_ip=request.client.host if request.client else None,
            detail=f"{gateway.id}: report {row.id}, {row.devices_complete}/{row.devices} devices complete",
        )
    return UploadOut(**_summary(row), report=report, device_ids_taken=taken)


@router.get("/gateways/{gateway_id}/commissioning", response_model=CommissioningOut, responses=_ERRORS)
async def get_reports(
    gateway_id: GatewayId,
    user: CurrentUser,
    services: ServicesDep,
    history: Annotated[int, Query(ge=1, le=500, description="How many uploads to list")] = 20,
) -> CommissioningOut:
    """The gateway's latest commissioning report and the list of uploads, newest first."""
    gateway = await _gateway(services, gateway_id)
    require_site(user, gateway.site_id, Permission.READ)
    async with services.read_sessions() as session:
        rows = (
            (
                await session.execute(
                    select(CommissioningReportRow)
                    .where(CommissioningReportRow.gateway_id == gateway.id)
                    .order_by(CommissioningReportRow.id.desc())
                    .limit(history)
                )
            )
            .scalars()
            .all()
        )
    latest = None
    if rows:
        newest = rows[0]
        latest = ReportOut(**_summary(newest), report=CommissioningReport.model_validate(newest.report))
    return CommissioningOut(
        gateway_id=gateway.id,
        site_id=gateway.site_id,
        latest=latest,
        history=[ReportSummary(**_summary(r)) for r in rows],
    )
