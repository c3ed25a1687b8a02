"""Fixtures for the EWS emulator conformance suite: token server, emulator, exchangelib accounts.

exchangelib is driven the way ``listener/ews`` drives it (DESIGN.md): app-only OAuth with an
external token through an ``OAuth2AuthorizationCodeCredentials`` subclass, impersonation, and the
emulator CA trusted by an ``HTTPAdapter`` whose ``cert_verify`` ignores the ``verify`` that
``REQUESTS_CA_BUNDLE`` forces on every session.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

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
from exchangelib.protocol import BaseProtocol
from exchangelib.version import EXCHANGE_2016

from ews_listener_emulators.ca import EmulatorCA
from ews_listener_emulators.server import EwsEmulator
from ews_listener_emulators.token_server import TokenServer

TENANT = "contoso.onmicrosoft.com"
CLIENT_ID = "11111111-2222-3333-4444-555555555555"
SCOPED_CLIENT_ID = "99999999-2222-3333-4444-555555555555"
ALICE = "alice@contoso.com"
BOB = "bob@contoso.com"
SCHEMA_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "ews-schema"


@pytest.fixture(scope="session")
def ca(tmp_path_factory: pytest.TempPathFactory) -> EmulatorCA:
    """The throw-away CA both servers present certificates from."""
    return EmulatorCA(tmp_path_factory.mktemp("emulator-ca"))


@pytest.fixture(scope="session")
def token_server(ca: EmulatorCA) -> Iterator[TokenServer]:
    """The emulated identity platform with one tenant and its apps."""
    server = TokenServer(ca=ca)
    server.add_tenant(TENANT)
    server.register_app(TENANT, CLIENT_ID, secret="s3cret")
    server.register_app(TENANT, SCOPED_CLIENT_ID, secret="s3cret")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def emulator_server(token_server: TokenServer, ca: EmulatorCA) -> Iterator[EwsEmulator]:
    """One emulator for the session (schema validation on when ../shared/ews-schema exists)."""
    schema_dir = SCHEMA_DIR if (SCHEMA_DIR / "ews.xsd").is_file() else None
    emulator = EwsEmulator(token_server, ca, schema_dir=schema_dir, validate_responses=True)
    emulator.start()
    yield emulator
    emulator.stop()


@pytest.fixture
def emu(emulator_server: EwsEmulator) -> Iterator[EwsEmulator]:
    """The emulator, reset, with Alice's and Bob's mailboxes; fails the test on schema errors."""
    emulator_server.reset()
    emulator_server.add_mailbox(ALICE, "Alice Example")
    emulator_server.add_mailbox(BOB, "Bob Example")
    yield emulator_server
    problems = [
        r
        for r in emulator_server.request_log
        if r.schema_valid is False or r.response_valid is False
    ]
    assert problems == [], f"schema validation failures: {problems}"


@pytest.fixture(scope="session")
def trusted_adapter(ca: EmulatorCA) -> Iterator[None]:
    """exchangelib sessions trust the emulator CA, whatever REQUESTS_CA_BUNDLE says."""
    ca_file = str(ca.ca_file)

    class EmulatorAdapter(requests.adapters.HTTPAdapter):
        def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
            super().cert_verify(conn=conn, url=url, verify=ca_file, cert=cert)

    previous = BaseProtocol.HTTP_ADAPTER_CLS
    BaseProtocol.HTTP_ADAPTER_CLS = EmulatorAdapter
    yield
    BaseProtocol.HTTP_ADAPTER_CLS = previous


class TokenCredentials(OAuth2AuthorizationCodeCredentials):  # type: ignore[misc]
    """App-only credentials with a token from outside (the token server); refresh asks again."""

    def __init__(self, fetch: Callable[[], str], identity: Identity) -> None:
        self._fetch = fetch
        super().__init__(access_token=self._token(), identity=identity, client_id=CLIENT_ID)

    def _token(self) -> dict[str, Any]:
        return {
            "access_token": self._fetch(),
            "token_type": "Bearer",
            "expires_in": 3000,
            "expires_at": time.time() + 3000,
        }

    def refresh(self, session: Any) -> None:
        self.access_token = self._token()


AccountFactory = Callable[..., Account]


@pytest.fixture
def make_account(
    emu: EwsEmulator, token_server: TokenServer, trusted_adapter: None
) -> Iterator[AccountFactory]:
    """Build an exchangelib Account for a mailbox, with a fresh token and Configuration."""
    accounts: list[Account] = []

    def make(
        address: str = ALICE,
        *,
        client_id: str = CLIENT_ID,
        token: str | None = None,
        pinned: bool = True,
        roles: tuple[str, ...] | None = None,
        identity: str | None = None,
    ) -> Account:
        def fetch() -> str:
            if token is not None:
                return token
            return token_server.issue_token(TENANT, client_id, roles=roles)

        credentials = TokenCredentials(fetch, Identity(primary_smtp_address=identity or address))
        config = Configuration(
            service_endpoint=emu.url,
            credentials=credentials,
            auth_type=OAUTH2,
            version=Version(build=EXCHANGE_2016) if pinned else None,
            max_connections=4,
        )
        account = Account(address, access_type=IMPERSONATION, config=config, autodiscover=False)
        accounts.append(account)
        return account

    yield make
    for account in accounts:
        account.protocol.close()


SoapPost = Callable[..., Any]


@pytest.fixture
def soap(emu: EwsEmulator, token_server: TokenServer, ca: EmulatorCA) -> Iterator[SoapPost]:
    """POST a raw SOAP body (the Body child's XML) to the emulator; returns the httpx response."""
    import httpx

    client = httpx.Client(verify=ca.client_context(), trust_env=False, timeout=30)

    def post(
        body: str,
        *,
        mailbox: str | None = ALICE,
        token: str | None = None,
        headers: dict[str, str] | None = None,
        anchor: bool = True,
    ) -> httpx.Response:
        impersonation = (
            "<t:ExchangeImpersonation><t:ConnectingSID>"
            f"<t:PrimarySmtpAddress>{mailbox}</t:PrimarySmtpAddress>"
            "</t:ConnectingSID></t:ExchangeImpersonation>"
            if mailbox
            else ""
        )
        envelope = (
            '<?xml version="1.0" encoding="utf-8"?>'
            '<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" '
            'xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages" '
            'xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types">'
            '<s:Header><t:RequestServerVersion Version="Exchange2016"/>'
            f"{impersonation}</s:Header><s:Body>{body}</s:Body></s:Envelope>"
        )
        sent = {
            "Content-Type": "text/xml; charset=utf-8",
            "Authorization": f"Bearer {token or token_server.issue_token(TENANT, CLIENT_ID)}",
        }
        if anchor and mailbox:
            sent["X-AnchorMailbox"] = mailbox
        sent.update(headers or {})
        return client.post(emu.url, content=envelope.encode(), headers=sent)

    yield post
    client.close()


def simple_mime(
    subject: str = "hello",
    *,
    sender: str = "Carol Sender <carol@example.com>",
    to: str = ALICE,
    body: str = "body text",
    message_id: str | None = None,
    extra_headers: str = "",
) -> bytes:
    """A minimal RFC 5322 text message."""
    mid = message_id or f"<{abs(hash((subject, body, time.perf_counter())))}@example.com>"
    return (
        f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\nMessage-ID: {mid}\r\n"
        f"Date: Mon, 01 Jan 2024 10:00:00 +0000\r\n{extra_headers}"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        f"{body}\r\n"
    ).encode()
