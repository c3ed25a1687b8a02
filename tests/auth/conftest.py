"""Token tests run against the emulator's real HTTPS token server on 127.0.0.1."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from ews_listener_emulators.ca import EmulatorCA
from ews_listener_emulators.token_server import TokenServer
from listener.config import CredentialConfig

TENANT = "contoso.onmicrosoft.com"
CLIENT_ID = "11111111-aaaa-4bbb-8ccc-000000000001"
SECRET = "a+b%2Fc:d="
SCOPE = "https://outlook.office365.com/.default"


@pytest.fixture(scope="session")
def ca(tmp_path_factory: pytest.TempPathFactory) -> EmulatorCA:
    """The emulator's throw-away CA, shared by the session."""
    return EmulatorCA(tmp_path_factory.mktemp("ca"))


@pytest.fixture
def tokens(ca: EmulatorCA) -> Iterator[TokenServer]:
    """A token server with one tenant and one app (secret ``SECRET``)."""
    server = TokenServer(ca=ca)
    server.add_tenant(TENANT)
    server.register_app(TENANT, CLIENT_ID, secret=SECRET)
    server.start()
    yield server
    server.stop()


KEY_PASSWORD = "k3y/pa:ss+word"


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, bytes]:
    """An app certificate, as an app registration uploads it: (encrypted key PEM path, certificate
    PEM path, certificate PEM). The key is RSA (Entra ID needs RSA) and encrypted with
    ``KEY_PASSWORD``."""
    directory = tmp_path_factory.mktemp("appcert")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ews-listener-app")])
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
    key_path, cert_path = directory / "key.pem", directory / "cert.pem"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(KEY_PASSWORD.encode()),
        )
    )
    pem = cert.public_bytes(serialization.Encoding.PEM)
    cert_path.write_bytes(pem)
    return key_path, cert_path, pem


def credential(
    server: TokenServer, ca: EmulatorCA, *, secret: str | None = SECRET, **overrides: Any
) -> CredentialConfig:
    """A credential for the test app against ``server``; ``overrides`` replace fields."""
    data: dict[str, Any] = {
        "client_id": CLIENT_ID,
        "token_endpoint": server.token_endpoint(TENANT),
        "scopes": SCOPE,
        "secret": {"source": "inline", "value": secret} if secret is not None else None,
        "ca_bundle": str(ca.ca_file),
    }
    data.update(overrides)
    return CredentialConfig.model_validate({k: v for k, v in data.items() if v is not None})
