"""The cloud service: ingest, store, registry, commands, API.

Public surface: :func:`create_app`, :func:`serve`, :class:`CloudSettings`.
"""

from cloud.app import create_app
from cloud.main import serve
from cloud.settings import CloudSettings, SettingsError

__all__ = ["CloudSettings", "SettingsError", "create_app", "serve"]
