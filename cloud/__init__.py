"""The cloud service: ingest, store, registry, commands, API."""
