"""Commands: issue one to a device, read it (optionally long-polling), read its audit trail."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, status

from cloud.api.deps import ServicesDep
from cloud.schemas import CommandAuditOut, CommandOut, CommandRequest, ErrorOut, command_json

router = APIRouter(tags=["commands"])
_ERRORS: dict[int | str, dict[str, Any]] = {
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
async def issue_command(device_id: str, body: CommandRequest, services: ServicesDep) -> dict[str, Any]:
    """Validate against the device kind's actions, store, publish to its gateway (QoS 1), answer 202."""
    return command_json(await services.commands.issue(device_id, body))


@router.get("/commands/{command_id}", response_model=CommandOut, responses=_ERRORS)
async def get_command(
    command_id: str,
    services: ServicesDep,
    wait: Annotated[float, Query(ge=0, le=60, description="Long-poll: seconds to wait for a change")] = 0,
    seen: Annotated[
        str | None,
        Query(description="The status the caller already has; a change is a status other than this"),
    ] = None,
) -> dict[str, Any]:
    if not wait:
        return command_json(await services.commands.get(command_id))
    row = await services.commands.wait(command_id, wait, seen=seen)
    return command_json(row)


@router.get("/commands/{command_id}/audit", response_model=list[CommandAuditOut], responses=_ERRORS)
async def get_command_audit(command_id: str, services: ServicesDep) -> list[CommandAuditOut]:
    await services.commands.get(command_id)
    return [CommandAuditOut.model_validate(r) for r in await services.commands.audit_trail(command_id)]
