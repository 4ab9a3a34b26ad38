"""`python -m steward.commission ...` until `steward commission` is wired into steward.cli."""

from steward.commission.cli import commission_app

commission_app(prog_name="steward commission")
