"""Exchange Online's app-only authentication and authorization, as exchangelib sees them."""

from __future__ import annotations

import pytest
from exchangelib.errors import (
    ErrorImpersonateUserDenied,
    ErrorNonExistentMailbox,
    UnauthorizedError,
)

from ews_listener_emulators.server import EwsEmulator
from ews_listener_emulators.token_server import TokenServer
from tests.emulator.conftest import (
    ALICE,
    BOB,
    CLIENT_ID,
    SCOPED_CLIENT_ID,
    TENANT,
    AccountFactory,
    SoapPost,
)

GET_INBOX = (
    "<m:GetFolder><m:FolderShape><t:BaseShape>IdOnly</t:BaseShape></m:FolderShape>"
    '<m:FolderIds><t:DistinguishedFolderId Id="inbox"/></m:FolderIds></m:GetFolder>'
)


def test_expired_token_gets_401_with_diagnostics(soap: SoapPost, token_server: TokenServer) -> None:
    """An expired token gets 401, an empty body, the Bearer challenge and 2000002 diagnostics."""
    expired = token_server.issue_token(TENANT, CLIENT_ID, lifetime=-60)
    response = soap(GET_INBOX, token=expired)
    assert response.status_code == 401
    assert response.content == b""
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith("Bearer ")
    assert 'error="invalid_token"' in challenge
    assert "app_asserted_user_v1 service_asserted_app_v1" in challenge
    diagnostics = response.headers["x-ms-diagnostics"]
    assert diagnostics.startswith("2000002;")
    assert 'error_category="token_expired"' in diagnostics
    assert expired not in diagnostics


@pytest.mark.parametrize(
    ("token", "code", "category"),
    [
        ("not-a-jwt", "2000001", "invalid_token"),
        ("eyJhbGciOiJSUzI1NiIsImtpZCI6Inh4eCJ9.eyJhIjoxfQ.c2ln", "2000000", "invalid_signature"),
    ],
)
def test_bad_tokens_get_their_diagnostic_codes(
    soap: SoapPost, token: str, code: str, category: str
) -> None:
    """Malformed and foreign-signed tokens get 2000001 / 2000000 diagnostics."""
    response = soap(GET_INBOX, token=token)
    assert response.status_code == 401
    assert response.headers["x-ms-diagnostics"].startswith(f"{code};")
    assert f'error_category="{category}"' in response.headers["x-ms-diagnostics"]


def test_missing_bearer_token_gets_401(soap: SoapPost) -> None:
    """A request without a Bearer token is refused with the challenge."""
    response = soap(GET_INBOX, headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert response.status_code == 401
    assert "Bearer" in response.headers["WWW-Authenticate"]


def test_token_expiry_surfaces_as_unauthorized_error(
    make_account: AccountFactory, token_server: TokenServer
) -> None:
    """exchangelib raises UnauthorizedError when the server says the token expired."""
    expired = token_server.issue_token(TENANT, CLIENT_ID, lifetime=-60)
    account = make_account(token=expired)
    with pytest.raises(UnauthorizedError):
        account.inbox.refresh()


def test_missing_impersonation_header_is_refused(soap: SoapPost) -> None:
    """App tokens need ExchangeImpersonation: ErrorInvalidExchangeImpersonationHeaderData."""
    response = soap(GET_INBOX, mailbox=None)
    assert response.status_code == 500
    assert b"ErrorInvalidExchangeImpersonationHeaderData" in response.content


def test_missing_anchor_mailbox_is_refused(soap: SoapPost) -> None:
    """App-only impersonation without X-AnchorMailbox is refused."""
    response = soap(GET_INBOX, anchor=False)
    assert response.status_code == 500
    assert b"ErrorInvalidExchangeImpersonationHeaderData" in response.content


def test_unknown_mailbox_raises_non_existent_mailbox(make_account: AccountFactory) -> None:
    """Impersonating a mailbox that does not exist raises ErrorNonExistentMailbox."""
    account = make_account("nobody@contoso.com")
    with pytest.raises(ErrorNonExistentMailbox):
        account.inbox.refresh()


def test_app_scope_denies_other_mailboxes(emu: EwsEmulator, make_account: AccountFactory) -> None:
    """An app scoped to Alice (RBAC for Applications) gets ErrorImpersonateUserDenied for Bob."""
    emu.allow(SCOPED_CLIENT_ID, [ALICE])
    make_account(ALICE, client_id=SCOPED_CLIENT_ID).inbox.refresh()
    bob = make_account(BOB, client_id=SCOPED_CLIENT_ID)
    with pytest.raises(ErrorImpersonateUserDenied):
        bob.inbox.refresh()
    make_account(BOB).inbox.refresh()  # an app without a scope reaches every mailbox
