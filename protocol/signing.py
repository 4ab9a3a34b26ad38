"""Ed25519 signatures on commands: the cloud signs, the gateway verifies before a gate moves.

A signature covers :meth:`protocol.models.Command.signing_bytes` (every field but ``signature``),
so the id, site, gateway, device, action, arguments and expiry cannot be changed without breaking
it. What a signature does *not* stop: replaying the same signed command (the gateway's persistent
replay guard does) and an attacker holding the cloud's private key.

Keys travel as the raw 32-byte key in base64 (one line that fits in a site YAML file) or as PEM
(PKCS#8 private key, SubjectPublicKeyInfo public key); loaders accept either. Nothing here does I/O
except :func:`save_private_key` / :func:`read_private_key` / :func:`read_public_key`.

Errors::

    ValueError
     └── KeyFormatError   text that is not an Ed25519 key in a form we read
    BadSignature          a command whose signature is missing, malformed or does not verify
"""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from protocol.models import Command

__all__ = [
    "BadSignature",
    "Ed25519PrivateKey",
    "Ed25519PublicKey",
    "KeyFormatError",
    "generate_private_key",
    "load_private_key",
    "load_public_key",
    "private_key_b64",
    "private_key_pem",
    "public_key_b64",
    "public_key_pem",
    "read_private_key",
    "read_public_key",
    "save_private_key",
    "sign_command",
    "verify_command",
]

SIGNATURE_BYTES = 64
_KEY_BYTES = 32


class KeyFormatError(ValueError):
    """Key text that is neither base64 of a raw 32-byte Ed25519 key nor an Ed25519 PEM."""


class BadSignature(Exception):
    """A command that must not be trusted; ``reason`` says why in words an operator understands."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# ---- keys ---------------------------------------------------------------------------------------
def generate_private_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def _public(key: Ed25519PrivateKey | Ed25519PublicKey) -> Ed25519PublicKey:
    return key.public_key() if isinstance(key, Ed25519PrivateKey) else key


def public_key_b64(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """The raw public key in base64: what goes into ``uplink.command_public_key`` of a site file."""
    raw = _public(key).public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def public_key_pem(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    return _public(key).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def private_key_b64(key: Ed25519PrivateKey) -> str:
    raw = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return base64.b64encode(raw).decode()


def private_key_pem(key: Ed25519PrivateKey, password: bytes | None = None) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    )
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


def _raw_b64(text: str, what: str) -> bytes:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise KeyFormatError(f"{what} is neither PEM nor base64") from None
    if len(raw) != _KEY_BYTES:
        raise KeyFormatError(f"{what} in base64 must decode to {_KEY_BYTES} bytes, got {len(raw)}")
    return raw


def load_public_key(data: str | bytes) -> Ed25519PublicKey:
    """Read a public key from base64 of the raw 32 bytes or from a PEM ``PUBLIC KEY`` block."""
    text = data.decode() if isinstance(data, bytes) else data
    if "-----BEGIN" in text:
        try:
            key = serialization.load_pem_public_key(text.encode())
        except ValueError as exc:
            raise KeyFormatError(f"public key PEM cannot be read: {exc}") from None
        if not isinstance(key, Ed25519PublicKey):
            raise KeyFormatError(f"public key is {type(key).__name__}, not Ed25519")
        return key
    return Ed25519PublicKey.from_public_bytes(_raw_b64(text, "public key"))


def load_private_key(data: str | bytes, password: bytes | None = None) -> Ed25519PrivateKey:
    """Read a private key from a PKCS#8 PEM (optionally encrypted) or base64 of the raw 32 bytes."""
    text = data.decode() if isinstance(data, bytes) else data
    if "-----BEGIN" in text:
        try:
            key = serialization.load_pem_private_key(text.encode(), password=password)
        except (ValueError, TypeError) as exc:
            raise KeyFormatError(f"private key PEM cannot be read: {exc}") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise KeyFormatError(f"private key is {type(key).__name__}, not Ed25519")
        return key
    return Ed25519PrivateKey.from_private_bytes(_raw_b64(text, "private key"))


def save_private_key(key: Ed25519PrivateKey, path: str | Path, password: bytes | None = None) -> Path:
    """Write the key as PEM, readable by its owner only (created 0600, never widened)."""
    path = Path(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private_key_pem(key, password))
    return path


def read_private_key(path: str | Path, password: bytes | None = None) -> Ed25519PrivateKey:
    return load_private_key(Path(path).read_bytes(), password)


def read_public_key(path: str | Path) -> Ed25519PublicKey:
    return load_public_key(Path(path).read_bytes())


# ---- commands -----------------------------------------------------------------------------------
def sign_command(cmd: Command, private_key: Ed25519PrivateKey) -> Command:
    """Return a copy of ``cmd`` with ``signature`` set; an existing signature is replaced."""
    signature = private_key.sign(cmd.signing_bytes())
    return cmd.model_copy(update={"signature": base64.b64encode(signature).decode()})


def verify_command(cmd: Command, public_key: Ed25519PublicKey) -> None:
    """Return if ``cmd`` was signed by the holder of ``public_key`` and not altered since; else raise."""
    if not cmd.signature:
        raise BadSignature("command is unsigned")
    try:
        signature = base64.b64decode(cmd.signature, validate=True)
    except (binascii.Error, ValueError):
        raise BadSignature("signature is not valid base64") from None
    if len(signature) != SIGNATURE_BYTES:
        raise BadSignature(f"signature must be {SIGNATURE_BYTES} bytes, got {len(signature)}")
    try:
        public_key.verify(signature, cmd.signing_bytes())
    except InvalidSignature:
        raise BadSignature(
            "signature does not verify (signed by another key, or the command was altered)"
        ) from None
