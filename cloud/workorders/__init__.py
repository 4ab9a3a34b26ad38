"""Work orders (工单): rules turn events and conditions into work orders; people move them through
acknowledged, assigned, in progress, resolved and closed (with the follow-up, 回访); missed deadlines
escalate to the team, supervisor and manager and are POSTed to a signed webhook; planned maintenance opens
its own on schedule. See docs/workorders.md.

Public surface: the service, its settings and config loaders, the webhook signature helpers.
"""

from cloud.workorders.lifecycle import ALLOWED, InvalidTransition, Status
from cloud.workorders.rules import Priority, Rule, RulesError, RuleSet, load_rules, parse_rules
from cloud.workorders.schedules import MaintenancePlan, Schedule, load_plan, parse_plan
from cloud.workorders.service import WorkOrderService
from cloud.workorders.settings import WorkOrderSettings
from cloud.workorders.webhook import SIGNATURE_HEADER, sign, verify

__all__ = [
    "ALLOWED",
    "SIGNATURE_HEADER",
    "InvalidTransition",
    "MaintenancePlan",
    "Priority",
    "Rule",
    "RuleSet",
    "RulesError",
    "Schedule",
    "Status",
    "WorkOrderService",
    "WorkOrderSettings",
    "load_plan",
    "load_rules",
    "parse_plan",
    "parse_rules",
    "sign",
    "verify",
]
