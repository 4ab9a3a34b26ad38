"""The operator console: static HTML/JS/CSS served by the cloud at ``/console/`` (no build step).

The browser talks only to the public ``/api/v1`` HTTP API and its server-sent event stream, so the
console holds no server-side state of its own.
"""

from cloud.console.feature import STATIC_DIR, install

__all__ = ["STATIC_DIR", "install"]
