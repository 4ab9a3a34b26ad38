"""Work order routes under ``/api/v1``. Handlers only translate HTTP to :class:`WorkOrderService` calls.

Every route takes the authenticated caller: lists are limited to the caller's sites, items are
checked against their site (403, audited), and the actor recorded is the caller, never the body.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Response

from cloud.api.deps import ServicesDep
from cloud.auth import CurrentUser, Permission, require_site
from cloud.schemas import ErrorOut
from cloud.workorders.lifecycle import Status
from cloud.workorders.report import to_csv
from cloud.workorders.rules import Priority
from cloud.workorders.schemas import (
    ManualWorkOrderIn,
    TransitionIn,
    WorkOrderDetail,
    WorkOrderPage,
    WorkOrderReport,
)
from cloud.workorders.service import WorkOrderService

router = APIRouter(tags=["work orders"])
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "bad cursor"},
    401: {"model": ErrorOut, "description": "no valid bearer token"},
    403: {"model": ErrorOut, "description": "not allowed at that site"},
    404: {"model": ErrorOut, "description": "no such work order"},
    409: {"model": ErrorOut, "description": "invalid transition; the message names the allowed ones"},
    422: {"model": ErrorOut, "description": "invalid request"},
}


async def get_work_orders(services: ServicesDep) -> WorkOrderService:
    service: WorkOrderService = services.extras["workorders"]
    return service


WorkOrdersDep = Annotated[WorkOrderService, Depends(get_work_orders)]
# Work order ids are SQL integers: a larger number is a 422, not an overflow (500) in the driver.
WorkOrderId = Annotated[int, Path(ge=1, le=2**63 - 1)]


@router.get("/work-orders", response_model=WorkOrderPage, responses=ERRORS)
async def list_work_orders(
    *,
    user: CurrentUser,
    work_orders: WorkOrdersDep,
    site: Annotated[str | None, Query(max_length=64)] = None,
    status: Status | None = None,
    priority: Priority | None = None,
    category: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: str | None = None,
) -> WorkOrderPage:
    if site is not None:
        require_site(user, site, Permission.READ)
    return await work_orders.page(
        sites=user.sites_with(Permission.READ),
        site=site,
        status=status.value if status else None,
        priority=priority.value if priority else None,
        category=category,
        limit=limit,
        cursor=cursor,
    )


@router.post("/work-orders", response_model=WorkOrderDetail, status_code=201, responses=ERRORS)
async def create_work_order(
    body: ManualWorkOrderIn, user: CurrentUser, work_orders: WorkOrdersDep
) -> WorkOrderDetail:
    require_site(user, body.site_id, Permission.WORK_ORDERS)
    return await work_orders.create_manual(body.model_copy(update={"actor": user.username}))


@router.get("/work-orders/{work_order_id}", response_model=WorkOrderDetail, responses=ERRORS)
async def get_work_order(
    work_order_id: WorkOrderId, user: CurrentUser, work_orders: WorkOrdersDep
) -> WorkOrderDetail:
    detail = await work_orders.detail(work_order_id)
    require_site(user, detail.site_id, Permission.READ)
    return detail


@router.post("/work-orders/{work_order_id}/transitions", response_model=WorkOrderDetail, responses=ERRORS)
async def transition_work_order(
    work_order_id: WorkOrderId, body: TransitionIn, user: CurrentUser, work_orders: WorkOrdersDep
) -> WorkOrderDetail:
    current = await work_orders.detail(work_order_id)
    require_site(user, current.site_id, Permission.WORK_ORDERS)
    return await work_orders.transition(work_order_id, body.model_copy(update={"actor": user.username}))


@router.get(
    "/reports/work-orders",
    response_model=WorkOrderReport,
    responses={
        200: {"content": {"text/csv": {}}},
        401: ERRORS[401],
        403: ERRORS[403],
        422: ERRORS[422],
    },
)
async def work_order_report(
    *,
    user: CurrentUser,
    work_orders: WorkOrdersDep,
    # A site id (it also names the CSV file in a header, which takes no arbitrary text).
    site: Annotated[str | None, Query(pattern=r"^[A-Za-z0-9_.-]{1,64}$")] = None,
    from_: Annotated[
        datetime | None, Query(alias="from", description="Created at or after (ISO 8601)")
    ] = None,
    to: Annotated[datetime | None, Query(description="Created before (ISO 8601)")] = None,
    format: Literal["json", "csv"] = "json",
) -> WorkOrderReport | Response:
    if site is not None:
        require_site(user, site, Permission.READ)
    elif not user.all_sites:
        # A report across every estate is for those who see every estate.
        require_site(user, "*", Permission.READ)
    result = await work_orders.report(site, _aware(from_), _aware(to))
    if format == "csv":
        name = f"work-orders-{site or 'all'}.csv"
        return Response(
            to_csv(result),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )
    return result


def _aware(value: datetime | None) -> datetime | None:
    from datetime import UTC

    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)  # a bare date or time means UTC
    return value
