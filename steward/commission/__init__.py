"""Installer commissioning (issue #9): `steward commission ...`; see docs/commissioning.md."""

from steward.commission.cli import CommissionHooks, commission_app

__all__ = ["CommissionHooks", "commission_app"]
