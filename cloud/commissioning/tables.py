"""SQLAlchemy table of the commissioning feature; API schemas live in :mod:`cloud.commissioning.schemas`.

``commissioning_reports``  one row per upload, never changed: the history of a gateway's handovers
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from cloud.tables import Base, BigId

__all__ = ["CommissioningReportRow"]


class CommissioningReportRow(Base):
    __tablename__ = "commissioning_reports"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    gateway_id: Mapped[str] = mapped_column(String(64))
    site_id: Mapped[str] = mapped_column(String(64))
    uploaded_by: Mapped[str] = mapped_column(String(64))
    uploaded_at: Mapped[datetime]
    installer: Mapped[str] = mapped_column(String(200))
    generated_at: Mapped[datetime]
    complete: Mapped[bool] = mapped_column(Boolean)
    devices: Mapped[int] = mapped_column(Integer)
    devices_complete: Mapped[int] = mapped_column(Integer)
    report: Mapped[dict[str, Any]] = mapped_column(JSON)

    __table_args__ = (Index("ix_commissioning_reports_gateway", "gateway_id", "id"),)
