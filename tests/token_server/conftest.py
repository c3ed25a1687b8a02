"""Fixtures for the token server tests: one CA per session, a fresh server per test."""

from __future__ import annotations

import datetime as dt
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from ews_listener_emulators.ca import EmulatorCA
from ews_listener_emulators.token_server import TokenServer

TENANT = "contoso.onmicrosoft.com"
SECRET_APP = "11111111-aaaa-4bbb-8ccc-000000000001"
CERT_APP = "11111111-aaaa-4bbb-8ccc-000000000002"
SECRET = "plain-secret-value"
SPECIAL_SECRETS = ("a+b%2Fc:d=", "jhyun/ku[ojubbj]/jhgfdrg^7*dfg&jkiu#bjshdm,ktttdg")


@dataclass(frozen=True)
class AppCert:
    """An RSA key and its self-signed certificate, PEM-encoded."""

    key: rsa.RSAPrivateKey
    key_pem: bytes
    cert: x509.Certificate
    cert_pem: bytes


def make_cert(name: str = "app") -> AppCert:
    """A fresh RSA key with a self-signed certificate (what an app registration uploads)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return AppCert(key, key_pem, cert, cert.public_bytes(serialization.Encoding.PEM))


@pytest.fixture(scope="session")
def ca(tmp_path_factory: pytest.TempPathFactory) -> EmulatorCA:
    """The emulator CA, shared by the session."""
    return EmulatorCA(Path(tmp_path_factory.mktemp("ca")))


@pytest.fixture(scope="session")
def app_cert() -> AppCert:
    """The registered certificate of CERT_APP."""
    return make_cert("cert-app")


@pytest.fixture
def server(ca: EmulatorCA, app_cert: AppCert) -> Iterator[TokenServer]:
    """A running HTTPS token server with one tenant, a secret app and a certificate app."""
    with TokenServer(ca=ca) as srv:
        srv.add_tenant(TENANT)
        srv.register_app(TENANT, SECRET_APP, secret=SECRET, display_name="Sales listener")
        srv.register_app(TENANT, CERT_APP, certificate_pem=app_cert.cert_pem)
        yield srv


@pytest.fixture
def tls(ca: EmulatorCA) -> ssl.SSLContext:
    """A client TLS context that trusts only the emulator CA."""
    return ca.client_context()


@pytest.fixture
def client(tls: ssl.SSLContext) -> Iterator[httpx.Client]:
    """An httpx client trusting the emulator CA (immune to REQUESTS_CA_BUNDLE)."""
    with httpx.Client(verify=tls, trust_env=False, timeout=10) as c:
        yield c
