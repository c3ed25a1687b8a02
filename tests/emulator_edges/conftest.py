"""Fixtures for the emulator-edges tests: a token server, an EWS emulator, exchangelib accounts.

The emulator is served over HTTPS (requests-oauthlib refuses Bearer tokens over plain HTTP).
``requests`` lets ``REQUESTS_CA_BUNDLE`` override a session's ``verify``, so exchangelib gets an
HTTP adapter that verifies with the emulator CA whatever the environment says; the fixture puts
exchangelib's process-wide ``HTTP_ADAPTER_CLS`` back afterwards. Schema validation of requests
and responses is on whenever the schema folder exists.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests.adapters
from exchangelib import (
    IMPERSONATION,
    OAUTH2,
    Account,
    Configuration,
    Identity,
    OAuth2AuthorizationCodeCredentials,
    Version,
)
from exchangelib.protocol import BaseProtocol, FailFast, FaultTolerance, close_connections
from exchangelib.version import EXCHANGE_2016

from ews_listener_emulators.ca import EmulatorCA
from ews_listener_emulators.ops import notifications
from ews_listener_emulators.server import EwsEmulator
from ews_listener_emulators.token_server import TokenServer

TENANT = "edges.example"
CLIENT_ID = "22222222-aaaa-4bbb-8ccc-000000000001"
MAILBOX = "orders@edges.example"
OTHER = "support@edges.example"

_SHARED_SCHEMA = Path(__file__).resolve().parents[3] / "shared" / "ews-schema"
SCHEMA_DIR: str | None = os.environ.get("EWS_SCHEMA_DIR") or (
    str(_SHARED_SCHEMA) if (_SHARED_SCHEMA / "ews.xsd").is_file() else None
)
_client_ids = itertools.count(1)

AccountFactory = Callable[..., Account]


@pytest.fixture(scope="session")
def ca(tmp_path_factory: pytest.TempPathFactory) -> EmulatorCA:
    """The emulator CA, shared by the session."""
    return EmulatorCA(Path(tmp_path_factory.mktemp("edges-ca")))


@pytest.fixture
def token_server(ca: EmulatorCA) -> Iterator[TokenServer]:
    """A running token server with one tenant and one app."""
    with TokenServer(ca=ca) as server:
        server.add_tenant(TENANT)
        server.register_app(TENANT, CLIENT_ID, secret="edges-secret")
        yield server


def _adapter_for(ca_file: str) -> type[requests.adapters.HTTPAdapter]:
    class EmulatorCAAdapter(requests.adapters.HTTPAdapter):
        """Verifies TLS with the emulator CA only (REQUESTS_CA_BUNDLE cannot override it)."""

        def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
            super().cert_verify(conn, url, ca_file, cert)

        def get_connection_with_tls_context(
            self, request: Any, verify: Any, proxies: Any = None, cert: Any = None
        ) -> Any:
            return super().get_connection_with_tls_context(request, ca_file, proxies, cert)

    return EmulatorCAAdapter


@pytest.fixture
def emulator(
    token_server: TokenServer, ca: EmulatorCA, monkeypatch: pytest.MonkeyPatch
) -> Iterator[EwsEmulator]:
    """An HTTPS emulator with two mailboxes, a fast protocol minute and schema checks."""
    monkeypatch.setattr(BaseProtocol, "HTTP_ADAPTER_CLS", _adapter_for(str(ca.ca_file)))
    emu = EwsEmulator(token_server, ca, schema_dir=SCHEMA_DIR, validate_responses=True)
    emu.start()
    emu.add_mailbox(MAILBOX)
    emu.add_mailbox(OTHER)
    notifications.configure(emu, minute=0.4, keepalive=0.1)
    try:
        yield emu
    finally:
        emu.stop()
        close_connections()
    # CI runs with the schema: no request or response of these tests may violate it.
    invalid = [r for r in emu.request_log if r.schema_valid is False or r.response_valid is False]
    assert invalid == [], f"schema violations: {invalid}"


def fast_fault_tolerance(max_wait: float = 2.0) -> FaultTolerance:
    """exchangelib's retrying policy with a short patience (tests never wait long)."""
    return FaultTolerance(max_wait=max_wait)


@pytest.fixture
def account(emulator: EwsEmulator, token_server: TokenServer) -> AccountFactory:
    """Build exchangelib accounts on the emulator: ``account(policy=FailFast(), mailbox=…)``.

    Each account gets its own credentials (a distinct client id in the credentials object), so
    exchangelib's protocol cache never hands one test's retry policy to another account.
    ``retry_wait`` shrinks exchangelib's default 10 s wait when the server gives no back-off.
    """

    def build(
        policy: Any = None,
        mailbox: str = MAILBOX,
        *,
        retry_wait: float = 0.05,
        lifetime: float = 3600,
    ) -> Account:
        token = token_server.issue_token(TENANT, CLIENT_ID, lifetime=lifetime)
        credentials = OAuth2AuthorizationCodeCredentials(
            client_id=f"edges-client-{next(_client_ids)}",
            access_token={"access_token": token, "token_type": "Bearer", "expires_in": 3600},
            identity=Identity(primary_smtp_address=mailbox),
        )
        config = Configuration(
            service_endpoint=emulator.url,
            credentials=credentials,
            auth_type=OAUTH2,
            version=Version(build=EXCHANGE_2016),
            retry_policy=policy if policy is not None else FailFast(),
            max_connections=4,
        )
        account = Account(mailbox, config=config, autodiscover=False, access_type=IMPERSONATION)
        account.protocol.RETRY_WAIT = retry_wait
        return account

    return build


GET_INBOX = (
    "<m:GetFolder><m:FolderShape><t:BaseShape>IdOnly</t:BaseShape></m:FolderShape>"
    '<m:FolderIds><t:DistinguishedFolderId Id="inbox"/></m:FolderIds></m:GetFolder>'
)


def envelope(body: str, mailbox: str = MAILBOX) -> bytes:
    """A SOAP request as exchangelib writes it: version, impersonation, ``body``."""
    return (
        '<?xml version="1.0" encoding="utf-8"?>'
        '<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"'
        ' xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages"'
        ' xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types">'
        '<s:Header><t:RequestServerVersion Version="Exchange2016"/>'
        "<t:ExchangeImpersonation><t:ConnectingSID>"
        f"<t:PrimarySmtpAddress>{mailbox}</t:PrimarySmtpAddress>"
        "</t:ConnectingSID></t:ExchangeImpersonation></s:Header>"
        f"<s:Body>{body}</s:Body></s:Envelope>"
    ).encode()


def soap_post(
    client: httpx.Client,
    emulator: EwsEmulator,
    token_server: TokenServer,
    body: str,
    mailbox: str = MAILBOX,
) -> httpx.Response:
    """POST one raw SOAP request with a valid app token (for what exchangelib cannot show)."""
    token = token_server.issue_token(TENANT, CLIENT_ID)
    return client.post(
        emulator.url,
        content=envelope(body, mailbox),
        headers={
            "Authorization": f"Bearer {token}",
            "X-AnchorMailbox": mailbox,
            "Content-Type": "text/xml; charset=utf-8",
        },
    )
