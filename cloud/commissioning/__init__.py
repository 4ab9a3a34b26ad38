"""Commissioning reports in the cloud: the installer's handover report, uploaded per gateway.

``steward commission report --upload`` sends the report it writes locally to
``POST /api/v1/gateways/{id}/commissioning`` (installer of the gateway's site, or admin); anyone who may
read the site sees the latest report and the upload history at ``GET`` on the same path
(``docs/commissioning.md``).
"""

from cloud.commissioning.schemas import MAX_REPORT_BYTES, CommissioningReport

__all__ = ["MAX_REPORT_BYTES", "CommissioningReport"]
