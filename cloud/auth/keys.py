"""The cloud's command signing key: read from ``command_signing_key_file`` or created there (0600).

Creation is race-free across processes (two cloud instances starting on one host): the key is written
to a private temporary file and hard-linked into place, so a reader never sees a half-written file
and the first writer wins.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

import structlog

from cloud.settings import CloudSettings
from protocol.signing import Ed25519PrivateKey, generate_private_key, private_key_pem, read_private_key

__all__ = ["load_command_signing_key", "signing_key_path"]

log = structlog.get_logger("steward.cloud.auth")


def signing_key_path(settings: CloudSettings) -> Path:
    return settings.command_signing_key_file or settings.state_dir / "command-signing.pem"


def load_command_signing_key(settings: CloudSettings) -> Ed25519PrivateKey:
    path = signing_key_path(settings)
    password = (
        settings.command_signing_key_password.get_secret_value().encode()
        if settings.command_signing_key_password
        else None
    )
    if not path.exists():
        _create(path, password)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log.warning("auth.signing_key_readable_by_others", path=str(path), mode=oct(mode))
    return read_private_key(path, password)


def _create(path: Path, password: bytes | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    key = generate_private_key()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".signing-", suffix=".tmp")  # 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(private_key_pem(key, password))
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return  # another process created it first; use theirs
    finally:
        os.unlink(tmp)
    log.warning(
        "auth.signing_key_created",
        path=str(path),
        hint="give its public key (GET /api/v1/auth/command-key) to every gateway",
    )
