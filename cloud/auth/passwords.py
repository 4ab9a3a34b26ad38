"""Password hashing: argon2id (argon2-cffi, RFC 9106 low-memory profile), off the event loop."""

from __future__ import annotations

import asyncio
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

__all__ = ["MIN_PASSWORD_LENGTH", "generate_password", "hash_password", "needs_rehash", "verify_password"]

MIN_PASSWORD_LENGTH = 12
_hasher = PasswordHasher()
# Checked when the username is unknown, so "no such user" costs what "wrong password" costs.
_DUMMY = _hasher.hash(secrets.token_urlsafe(16))


def generate_password() -> str:
    """128 random bits, URL-safe: for generated admin and demo passwords."""
    return secrets.token_urlsafe(16)


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def needs_rehash(password_hash: str) -> bool:
    return _hasher.check_needs_rehash(password_hash)


def _verify(password_hash: str | None, password: str) -> bool:
    try:
        return _hasher.verify(password_hash or _DUMMY, password) and password_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


async def verify_password(password_hash: str | None, password: str) -> bool:
    """True if ``password`` matches; ``None`` (unknown user) takes as long and is always False."""
    return await asyncio.to_thread(_verify, password_hash, password)
