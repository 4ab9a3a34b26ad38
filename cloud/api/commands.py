"""Commands: issue one to a device, read it (optionally long-polling), read its audit trail, list them.

Issuing needs the ``command`` permission at the device's site; reading needs ``read`` there; the list
holds the caller's sites only (``site_id`` of another site: 403).
The command's ``issued_by`` is always the authenticated user; the request body cannot name one (an
``issued_by`` there is an unknown field: 422 ``invalid_request``, like any other)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, status
from sqlalchemy import select

from cloud.api.deps import ReadSessionDep, ServicesDep
from cloud.api.paging import older_than, page, require_aware, time_cursor
from cloud.auth.deps import CurrentUser, require_site, site_clause
from cloud.auth.permissions import Permission
from cloud.schemas import (
    CommandAuditOut,
    CommandOut,
    CommandPage,
    CommandRequest,
    ErrorOut,
    command_json,
    command_out,
)
from cloud.tables import CommandRow
from protocol.models import CommandStatus

router = APIRouter(tags=["commands"])
_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut},
    401: {"model": ErrorOut},
    403: {"model": ErrorOut},
    404: {"model": ErrorOut},
    422: {"model": ErrorOut},
    503: {"model": ErrorOut},
}


@router.post(
    "/devices/{device_id}/commands",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=CommandOut,
    responses=_ERRORS,
)
async def issue_command(
    device_id: str,
    body: CommandRequest,
    user: CurrentUser,
    services: ServicesDep,
    wait: Annotated[
        float,
        Query(
            ge=0,
            le=60,
            description="Seconds to wait for the command to finish (succeeded, failed, rejected or expired)"
            " before answering; 0 answers once it is sent. The answer is the command as it is then:"
            " ``final`` says whether it has finished.",
        ),
    ] = 0,
) -> dict[str, Any]:
    """Validate against the device kind's actions, store, sign, publish to its gateway (QoS 1), answer
    202: at once, or with ``wait``, when the command has finished (one request for a console's "open
    the gate" button, instead of a POST and long-polls)."""

    def authorize(site_id: str) -> None:
        require_site(user, site_id, Permission.COMMAND)

    # The device lookup and the permission check happen inside issue()'s one write transaction.
    row = await services.commands.issue(device_id, body, issued_by=user.username, authorize=authorize)
    if wait:
        row = await services.commands.wait(row.id, wait, until_final=True, row=row)
    return command_json(row)


@router.get("/commands/{command_id}", response_model=CommandOut, responses=_ERRORS)
async def get_command(
    command_id: str,
    user: CurrentUser,
    services: ServicesDep,
    wait: Annotated[float, Query(ge=0, le=60, description="Long-poll: seconds to wait for a change")] = 0,
    seen: Annotated[
        str | None,
        Query(description="The status the caller already has; a change is a status other than this"),
    ] = None,
) -> dict[str, Any]:
    def authorize(row: CommandRow) -> None:
        require_site(user, row.site_id, Permission.READ)

    if not wait:
        row = await services.commands.get(command_id)
        authorize(row)
    else:
        row = await services.commands.wait(command_id, wait, seen=seen, authorize=authorize)
    return command_json(row)


@router.get("/commands/{command_id}/audit", response_model=list[CommandAuditOut], responses=_ERRORS)
async def get_command_audit(
    command_id: str, user: CurrentUser, services: ServicesDep
) -> list[CommandAuditOut]:
    require_site(user, (await services.commands.get(command_id)).site_id, Permission.READ)
    return [CommandAuditOut.model_validate(r) for r in await services.commands.audit_trail(command_id)]


@router.get("/commands", response_model=CommandPage, responses=_ERRORS)
async def list_commands(
    *,
    user: CurrentUser,
    session: ReadSessionDep,
    site_id: str | None = None,
    gateway_id: str | None = None,
    device_id: str | None = None,
    issued_by: Annotated[str | None, Query(max_length=128, description="The operator who issued")] = None,
    status: CommandStatus | None = None,
    action: Annotated[str | None, Query(max_length=32)] = None,
    from_: Annotated[datetime | None, Query(alias="from", description="Issued at or after")] = None,
    to: Annotated[datetime | None, Query(description="Issued before")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: str | None = None,
) -> CommandPage:
    """The command log, newest first: who asked which device to do what, why, and how it ended (each
    command as ``GET /commands/{id}`` shows it; its audit trail there). For a console's list of what
    every operator did at an estate, and for "who opened the east gate last night"."""
    if site_id:
        require_site(user, site_id)
    require_aware(("from", from_), ("to", to))
    query = select(CommandRow).where(site_clause(user, CommandRow.site_id))
    for column, value in (
        (CommandRow.site_id, site_id),
        (CommandRow.gateway_id, gateway_id),
        (CommandRow.device_id, device_id),
        (CommandRow.issued_by, issued_by),
        (CommandRow.status, status.value if status else None),
        (CommandRow.action, action),
    ):
        if value:
            query = query.where(column == value)
    if from_ is not None:
        query = query.where(CommandRow.issued_at >= from_)
    if to is not None:
        query = query.where(CommandRow.issued_at < to)
    query = query.order_by(CommandRow.issued_at.desc(), CommandRow.id.desc())
    if cursor:
        query = query.where(older_than(cursor, "c", CommandRow.issued_at, CommandRow.id))
    rows, tail = await page(session, query, limit)
    next_cursor = None if tail is None else time_cursor("c", tail.issued_at, tail.id)
    return CommandPage(items=[command_out(r) for r in rows], next_cursor=next_cursor)
