"""A small private PKI for the broker: a CA, the broker's server certificate, client certificates.

Enough for a single estate operator or for tests, not a replacement for a managed CA: keys are
ECDSA P-256 written unencrypted (0600) because Mosquitto and the gateway read them unattended.
The CA key signs everything, so keep it offline once the certificates are issued; rotation is
"issue new, deploy, then stop trusting the old" (see docs/security.md).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["CertFiles", "CertificateAuthority", "LoopbackPki", "make_loopback_pki"]

PrivateKey = ec.EllipticCurvePrivateKey


@dataclass(frozen=True, slots=True)
class CertFiles:
    cert_file: Path
    key_file: Path


def _new_key() -> PrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Steward"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _write(out_dir: Path, stem: str, cert: x509.Certificate, key: PrivateKey) -> CertFiles:
    out_dir.mkdir(parents=True, exist_ok=True)
    files = CertFiles(out_dir / f"{stem}.crt", out_dir / f"{stem}.key")
    files.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(files.key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    return files


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


class CertificateAuthority:
    def __init__(self, cert: x509.Certificate, key: PrivateKey) -> None:
        self.cert = cert
        self.key = key

    @classmethod
    def create(
        cls, common_name: str = "Steward broker CA", *, valid_days: int = 3650
    ) -> CertificateAuthority:
        key = _new_key()
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(_name(common_name))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=valid_days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    @classmethod
    def load(cls, files: CertFiles) -> CertificateAuthority:
        cert = x509.load_pem_x509_certificate(files.cert_file.read_bytes())
        key = serialization.load_pem_private_key(files.key_file.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{files.key_file}: expected an EC private key")
        return cls(cert, key)

    def save(self, out_dir: str | Path, stem: str = "ca") -> CertFiles:
        return _write(Path(out_dir), stem, self.cert, self.key)

    def _issue(
        self,
        common_name: str,
        usage: x509.ObjectIdentifier,
        sans: list[x509.GeneralName],
        valid_days: int,
    ) -> tuple[x509.Certificate, PrivateKey]:
        key = _new_key()
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=valid_days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=True,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False
            )
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return builder.sign(self.key, hashes.SHA256()), key

    def issue_server(
        self,
        out_dir: str | Path,
        hosts: Iterable[str] = ("127.0.0.1", "localhost"),
        *,
        stem: str = "server",
        valid_days: int = 825,
    ) -> CertFiles:
        """The broker's certificate, valid for each of ``hosts`` (IP addresses or DNS names)."""
        hosts = list(hosts)
        if not hosts:
            raise ValueError("a server certificate needs at least one host name or address")
        cert, key = self._issue(
            hosts[0], ExtendedKeyUsageOID.SERVER_AUTH, [_san(h) for h in hosts], valid_days
        )
        return _write(Path(out_dir), stem, cert, key)

    def issue_client(
        self, out_dir: str | Path, common_name: str, *, stem: str | None = None, valid_days: int = 825
    ) -> CertFiles:
        """A client certificate (e.g. ``CN=gw-1@oak-garden``) for brokers with ``require_certificate``."""
        cert, key = self._issue(common_name, ExtendedKeyUsageOID.CLIENT_AUTH, [], valid_days)
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in common_name)
        return _write(Path(out_dir), stem or f"client-{safe}", cert, key)


@dataclass(frozen=True, slots=True)
class LoopbackPki:
    ca: CertificateAuthority
    ca_files: CertFiles
    server: CertFiles
    client: CertFiles


def make_loopback_pki(out_dir: str | Path, *, client_name: str = "gw-1@oak-garden") -> LoopbackPki:
    """A CA, a server certificate for 127.0.0.1/localhost and one client certificate, in ``out_dir``."""
    ca = CertificateAuthority.create()
    ca_files = ca.save(out_dir)
    return LoopbackPki(ca, ca_files, ca.issue_server(out_dir), ca.issue_client(out_dir, client_name))
