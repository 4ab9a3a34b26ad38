"""Shared runtime pieces: site configuration, logging, the MQTT client bridge and the CLI."""

__version__ = "0.1.0"
