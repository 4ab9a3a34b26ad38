"""The commissioning report as the cloud accepts it, and what the API answers.

The report is what ``steward.commission._log.build_report`` writes. It arrives from a laptop, so every
field is typed and bounded: a report that does not fit is refused whole (422), never stored in part.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from protocol.models import AwareDatetime
from protocol.topics import check_segment

__all__ = [
    "MAX_DEVICES",
    "MAX_REPORT_BYTES",
    "CommissioningOut",
    "CommissioningReport",
    "ReportOut",
    "ReportSummary",
]

# A large estate has a few thousand meters; 4 MiB holds them with room for their tests and summaries.
MAX_REPORT_BYTES = 4 * 1024 * 1024
MAX_DEVICES = 5000

Segment = Annotated[str, AfterValidator(lambda v: check_segment(v, "id"))]
Short = Annotated[str, Field(max_length=64)]
Text = Annotated[str, Field(max_length=2000)]
Who = Annotated[str, Field(max_length=200)]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Step(_In):
    """One logged step (probe, live check, action test): when, by whom, how it went."""

    at: AwareDatetime | None = None
    installer: Who | None = None
    ok: bool | None = None
    summary: Text | None = None


class ActionTest(Step):
    test: Short | None = None


class Sighting(_In):
    """Where a scan found the device."""

    at: AwareDatetime | None = None
    installer: Who | None = None
    model: Short | None = None
    label: Who | None = None


class Registration(_In):
    """The gateway's registration with the cloud, as the installer's laptop recorded it."""

    at: AwareDatetime
    installer: Who | None = None
    cloud: Annotated[str, Field(max_length=500)]
    broker_username: Annotated[str, Field(max_length=200)]
    rotated: bool


class DeviceReport(_In):
    id: Segment
    name: Who | None = None
    kind: Short
    model: Short
    address: Annotated[str, Field(max_length=300)]
    found: Sighting | None = None
    probed: Step | None = None
    tests: list[ActionTest] = Field(default_factory=list, max_length=100)
    live_check: Step | None = None
    complete: bool
    missing: list[Short] = Field(default_factory=list, max_length=10)


class CommissioningReport(_In):
    """A site's commissioning report, as ``steward commission report`` writes it."""

    site_id: Segment
    site_name: Who
    gateway_id: Segment
    config: Annotated[str, Field(max_length=1000)] = Field(description="The config's path on the laptop")
    installer: Who = Field(min_length=1)
    generated_at: AwareDatetime
    devices: list[DeviceReport] = Field(max_length=MAX_DEVICES)
    complete: bool
    log_entries: int = Field(ge=0)
    registered: Registration | None = None


class ReportSummary(BaseModel):
    id: int
    uploaded_at: datetime
    uploaded_by: str
    installer: str
    generated_at: datetime
    complete: bool
    devices: int
    devices_complete: int


class ReportOut(ReportSummary):
    report: CommissioningReport


class UploadOut(ReportOut):
    device_ids_taken: list[str] = Field(
        description="Device ids of the report that another site already has (which ids only, never whose): "
        "a device added to the config after registration is checked here, at handover"
    )


class CommissioningOut(BaseModel):
    gateway_id: str
    site_id: str
    latest: ReportOut | None = Field(description="The newest upload; null if none yet")
    history: list[ReportSummary] = Field(description="Uploads, newest first (the latest included)")
