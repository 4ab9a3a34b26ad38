"""Errors of accounts and access control, rendered like every :class:`cloud.errors.CloudError`.

::

    CloudError (cloud.errors)
     └── AuthError
          ├── Unauthorized       401 unauthorized        no, expired or revoked token (WWW-Authenticate)
          ├── BadCredentials     401 bad_credentials     wrong username or password (never says which)
          ├── Forbidden          403 forbidden           authenticated, but not allowed (audited)
          ├── Conflict           409 conflict            e.g. a gateway id registered at another site
          └── TooManyAttempts    429 too_many_attempts   login throttled (Retry-After)
"""

from __future__ import annotations

import math

from cloud.errors import CloudError

__all__ = ["AuthError", "BadCredentials", "Conflict", "Forbidden", "TooManyAttempts", "Unauthorized"]


class AuthError(CloudError):
    status = 401
    code = "unauthorized"

    def headers(self) -> dict[str, str]:
        return {}


class Unauthorized(AuthError):
    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer"}


class BadCredentials(Unauthorized):
    code = "bad_credentials"

    def __init__(self) -> None:
        super().__init__("invalid username or password")


class Forbidden(AuthError):
    """Raised by :func:`cloud.auth.deps.require_site`; the app's handler writes the ``auth_audit`` row."""

    status = 403
    code = "forbidden"

    def __init__(self, message: str, *, username: str, site_id: str | None, permission: str) -> None:
        super().__init__(message)
        self.username = username
        self.site_id = site_id
        self.permission = permission


class Conflict(AuthError):
    status = 409
    code = "conflict"


class TooManyAttempts(AuthError):
    status = 429
    code = "too_many_attempts"

    def __init__(self, retry_after_s: float) -> None:
        self.retry_after = max(1, math.ceil(retry_after_s))
        super().__init__(f"too many failed logins; try again in {self.retry_after} s")

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}
