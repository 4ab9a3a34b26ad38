"""Ed25519 command signatures: round trip over the wire, every field covered, keys in every form."""

from __future__ import annotations

import base64
import stat
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from protocol.models import Command, utcnow
from protocol.signing import (
    BadSignature,
    KeyFormatError,
    generate_private_key,
    load_private_key,
    load_public_key,
    private_key_b64,
    public_key_b64,
    public_key_pem,
    read_private_key,
    read_public_key,
    save_private_key,
    sign_command,
    verify_command,
)

KEY = generate_private_key()
PUB = KEY.public_key()


def command(**changes: Any) -> Command:
    now = utcnow()
    fields: dict[str, Any] = {
        "id": "01JABCDEFGHJKMNPQRSTVWXYZ0",
        "site_id": "oak-garden",
        "gateway_id": "gw-1",
        "device_id": "gate-north",
        "action": "open",
        "args": {"note": "visitor", "n": 1.5},
        "issued_at": now,
        "expires_at": now + timedelta(seconds=30),
        "issued_by": "operator@oak",
    }
    return Command(**{**fields, **changes})


def test_signed_command_verifies_after_a_trip_over_the_wire() -> None:
    signed = sign_command(command(), KEY)
    assert signed.signature is not None
    assert len(base64.b64decode(signed.signature)) == 64
    received = Command.model_validate_json(signed.to_bytes())
    verify_command(received, PUB)  # does not raise


def test_signing_does_not_change_the_command_otherwise() -> None:
    cmd = command()
    assert sign_command(cmd, KEY).model_copy(update={"signature": None}) == cmd
    assert cmd.signature is None  # the original is untouched (models are frozen)


@pytest.mark.parametrize(
    "change",
    [
        {"id": "01JABCDEFGHJKMNPQRSTVWXYZ1"},
        {"site_id": "elm-court"},
        {"gateway_id": "gw-2"},
        {"device_id": "gate-south"},
        {"action": "hold_open"},
        {"args": {"note": "visitor", "n": 2.5}},
        {"issued_by": "someone-else"},
    ],
    ids=lambda c: next(iter(c)),
)
def test_every_field_is_covered(change: dict[str, Any]) -> None:
    signed = sign_command(command(), KEY)
    forged = signed.model_copy(update=change)
    with pytest.raises(BadSignature, match="does not verify"):
        verify_command(forged, PUB)


def test_extending_the_expiry_breaks_the_signature() -> None:
    signed = sign_command(command(), KEY)
    forged = signed.model_copy(update={"expires_at": signed.expires_at + timedelta(days=1)})
    with pytest.raises(BadSignature, match="does not verify"):
        verify_command(forged, PUB)


def test_signature_by_another_key_is_refused() -> None:
    other = sign_command(command(), generate_private_key())
    with pytest.raises(BadSignature, match="does not verify"):
        verify_command(other, PUB)


@pytest.mark.parametrize(
    ("signature", "reason"),
    [
        (None, "unsigned"),
        ("", "unsigned"),
        ("not base64!!", "not valid base64"),
        (base64.b64encode(b"\0" * 10).decode(), "must be 64 bytes"),
        (base64.b64encode(b"\0" * 64).decode(), "does not verify"),
    ],
)
def test_malformed_signatures_are_refused_with_a_reason(signature: str | None, reason: str) -> None:
    with pytest.raises(BadSignature, match=reason) as err:
        verify_command(command(signature=signature), PUB)
    assert reason in err.value.reason


def test_keys_round_trip_as_base64_and_pem() -> None:
    b64 = public_key_b64(KEY)
    assert len(base64.b64decode(b64)) == 32
    assert public_key_b64(load_public_key(b64)) == b64
    assert public_key_b64(load_public_key(public_key_pem(KEY))) == b64
    assert public_key_b64(load_private_key(private_key_b64(KEY))) == b64


def test_private_key_file_is_owner_only_and_can_be_encrypted(tmp_path: Path) -> None:
    path = save_private_key(KEY, tmp_path / "command-signing.pem")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert public_key_b64(read_private_key(path)) == public_key_b64(KEY)

    locked = save_private_key(KEY, tmp_path / "locked.pem", password=b"passphrase")
    assert b"ENCRYPTED" in locked.read_bytes()
    assert public_key_b64(read_private_key(locked, b"passphrase")) == public_key_b64(KEY)
    with pytest.raises(KeyFormatError):
        read_private_key(locked, b"wrong")

    pub_path = tmp_path / "command-signing.pub"
    pub_path.write_bytes(public_key_pem(KEY))
    assert public_key_b64(read_public_key(pub_path)) == public_key_b64(KEY)


def test_bad_key_text_is_refused() -> None:
    with pytest.raises(KeyFormatError, match="neither PEM nor base64"):
        load_public_key("definitely not a key")
    with pytest.raises(KeyFormatError, match="32 bytes"):
        load_public_key(base64.b64encode(b"short").decode())
    ec_pem = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(KeyFormatError, match="not Ed25519"):
        load_public_key(ec_pem)
