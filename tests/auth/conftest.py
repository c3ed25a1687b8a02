"""Token tests run against the emulator's real HTTPS token server on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from listener.config import CredentialConfig
from listener.emulator.ca import EmulatorCA
from listener.emulator.token_server import TokenServer

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


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, bytes]:
    """An app certificate: (private key PEM path, certificate PEM path, certificate PEM)."""
    directory = tmp_path_factory.mktemp("appcert")
    issued = trustme.CA().issue_cert("ews-listener-app")
    key = directory / "key.pem"
    cert = directory / "cert.pem"
    issued.private_key_pem.write_to_path(str(key))
    issued.cert_chain_pems[0].write_to_path(str(cert))
    return key, cert, issued.cert_chain_pems[0].bytes()


def credential(
    server: TokenServer, ca: EmulatorCA, *, secret: str = SECRET, **overrides: Any
) -> CredentialConfig:
    """A credential for the test app against ``server``; ``overrides`` replace fields."""
    data: dict[str, Any] = {
        "client_id": CLIENT_ID,
        "token_endpoint": server.token_endpoint(TENANT),
        "scopes": SCOPE,
        "secret": {"source": "inline", "value": secret},
        "ca_bundle": str(ca.ca_file),
    }
    data.update(overrides)
    return CredentialConfig.model_validate({k: v for k, v in data.items() if v is not None})
