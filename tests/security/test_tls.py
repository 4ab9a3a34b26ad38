"""TLS to the broker: certificates from steward.pki, a real Mosquitto with TLS, steward.mqtt clients."""

from __future__ import annotations

import stat
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from protocol.topics import Topics
from steward.broker_auth import gateway_username, provision
from steward.mosquitto import MosquittoProcess, ServerTls
from steward.mqtt import MqttClient, MqttConnectError, TlsSettings
from steward.pki import CertFiles, CertificateAuthority, LoopbackPki, make_loopback_pki
from tests.security import needs_mosquitto, until_topic

GW = gateway_username("oak-garden", "gw-1")
TOPICS = Topics("steward", "oak-garden", "gw-1")
PROV = provision([("oak-garden", "gw-1")])
Connect = Callable[..., MqttClient]


def _cert(files: CertFiles) -> x509.Certificate:
    return x509.load_pem_x509_certificate(files.cert_file.read_bytes())


def test_pki_issues_a_usable_chain(tmp_path: Path) -> None:
    pki = make_loopback_pki(tmp_path)
    ca, server, client = _cert(pki.ca_files), _cert(pki.server), _cert(pki.client)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    server.verify_directly_issued_by(ca)
    client.verify_directly_issued_by(ca)
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    usage = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert list(client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH
    ]
    for key in (pki.ca_files.key_file, pki.server.key_file, pki.client.key_file):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    # A saved CA can be loaded again to issue more certificates.
    again = CertificateAuthority.load(pki.ca_files)
    _cert(again.issue_client(tmp_path / "more", "gw-2@oak-garden")).verify_directly_issued_by(ca)


@pytest.fixture
def pki(tmp_path: Path) -> LoopbackPki:
    return make_loopback_pki(tmp_path / "pki", client_name=GW)


@pytest.fixture
def rogue(tmp_path: Path) -> LoopbackPki:
    """A complete PKI nobody trusts: its CA, a server cert and a client cert."""
    return make_loopback_pki(tmp_path / "rogue", client_name=GW)


def _connector(m: MosquittoProcess) -> Connect:
    def connect(tls: TlsSettings | None, *, client_id: str = "gw-1", username: str = GW) -> MqttClient:
        return MqttClient(
            m.host, m.port, client_id=client_id, username=username, password=PROV.passwords[username], tls=tls
        )

    return connect


@pytest.fixture
async def tls_broker(tmp_path: Path, pki: LoopbackPki) -> AsyncIterator[Connect]:
    tls = ServerTls(pki.ca_files.cert_file, pki.server.cert_file, pki.server.key_file)
    async with MosquittoProcess(tmp_path / "m", PROV.accounts, tls=tls) as m:
        yield _connector(m)


@pytest.fixture
async def mtls_broker(tmp_path: Path, pki: LoopbackPki) -> AsyncIterator[Connect]:
    tls = ServerTls(
        pki.ca_files.cert_file, pki.server.cert_file, pki.server.key_file, require_certificate=True
    )
    async with MosquittoProcess(tmp_path / "m", PROV.accounts, tls=tls) as m:
        yield _connector(m)


@needs_mosquitto
async def test_verified_tls_connection_carries_messages(tls_broker: Connect, pki: LoopbackPki) -> None:
    trusted = TlsSettings(ca_file=str(pki.ca_files.cert_file))
    async with (
        tls_broker(trusted) as gw,
        tls_broker(trusted, client_id="cloud", username="steward-cloud") as cloud,
    ):
        await cloud.subscribe(Topics.cloud_uplink_filter("steward"))
        await gw.publish(TOPICS.events, b"over tls")
        assert [m.payload for m in await until_topic(cloud, TOPICS.events)] == [b"over tls"]


@needs_mosquitto
async def test_client_trusting_another_ca_cannot_connect(tls_broker: Connect, rogue: LoopbackPki) -> None:
    client = tls_broker(TlsSettings(ca_file=str(rogue.ca_files.cert_file)))
    with pytest.raises(MqttConnectError):
        await client.connect(timeout=2)
    assert not client.is_connected


@needs_mosquitto
async def test_plain_mqtt_to_the_tls_listener_fails(tls_broker: Connect) -> None:
    client = tls_broker(None)
    with pytest.raises(MqttConnectError):
        await client.connect(timeout=2)


@needs_mosquitto
async def test_server_certificate_for_another_host_is_refused(tmp_path: Path, pki: LoopbackPki) -> None:
    # Signed by the trusted CA, but for a different name: host name checking must catch it.
    wrong = pki.ca.issue_server(tmp_path / "wrong", ["broker.example.net"])
    tls = ServerTls(pki.ca_files.cert_file, wrong.cert_file, wrong.key_file)
    async with MosquittoProcess(tmp_path / "m", PROV.accounts, tls=tls) as m:
        client = _connector(m)(TlsSettings(ca_file=str(pki.ca_files.cert_file)))
        with pytest.raises(MqttConnectError):
            await client.connect(timeout=2)


@needs_mosquitto
async def test_client_certificate_accepted_when_required(mtls_broker: Connect, pki: LoopbackPki) -> None:
    tls = TlsSettings(
        ca_file=str(pki.ca_files.cert_file),
        cert_file=str(pki.client.cert_file),
        key_file=str(pki.client.key_file),
    )
    async with mtls_broker(tls) as gw:
        await gw.publish(TOPICS.events, b"with a client certificate")


@needs_mosquitto
async def test_missing_client_certificate_is_refused_when_required(
    mtls_broker: Connect, pki: LoopbackPki
) -> None:
    client = mtls_broker(TlsSettings(ca_file=str(pki.ca_files.cert_file)))
    with pytest.raises(MqttConnectError):
        await client.connect(timeout=2)


@needs_mosquitto
async def test_client_certificate_from_another_ca_is_refused(
    mtls_broker: Connect, pki: LoopbackPki, rogue: LoopbackPki
) -> None:
    tls = TlsSettings(
        ca_file=str(pki.ca_files.cert_file),
        cert_file=str(rogue.client.cert_file),
        key_file=str(rogue.client.key_file),
    )
    client = mtls_broker(tls)
    with pytest.raises(MqttConnectError):
        await client.connect(timeout=2)
