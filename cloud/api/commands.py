"""Commands: issue one to a device, read it (optionally long-polling), read its audit trail.

Issuing needs the ``command`` permission at the device's site; reading needs ``read`` there.
The command's ``issued_by`` is always the authenticated user; the request body cannot name one (an
``issued_by`` there is an unknown field: 422 ``invalid_request``, like any other)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, status

from cloud.api.deps import ServicesDep
from cloud.auth.deps import CurrentUser, require_site
from cloud.auth.permissions import Permission
from cloud.schemas import CommandAuditOut, CommandOut, CommandRequest, ErrorOut, command_json
from cloud.tables import CommandRow

router = APIRouter(tags=["commands"])
_ERRORS: dict[int | str, dict[str, Any]] = {
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
