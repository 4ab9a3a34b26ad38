"""Globally unique, time-ordered ids (ULID) for events, batches and commands."""

from ulid import ULID


def new_id() -> str:
    """A 26-character ULID: sorts by creation time, unique without coordination."""
    return str(ULID())
