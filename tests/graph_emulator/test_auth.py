"""Tokens, roles and mailbox scopes on the Graph endpoint, and the audience wall between Graph and
EWS, as Exchange Online and Microsoft Graph draw it."""

from __future__ import annotations

import base64
import json

import httpx
import pytest

from ews_listener_emulators.graph.server import GraphEmulator
from ews_listener_emulators.server import EwsEmulator
from ews_listener_emulators.token_server import GRAPH_AUDIENCES
from tests.graph_emulator.conftest import (
    ALICE,
    BOB,
    CLIENT_ID,
    EWS_SCOPE,
    NOROLE_ID,
    READER_ID,
    SCOPED_ID,
    TENANT,
    Call,
    TokenFactory,
    World,
)

INBOX = f"users/{ALICE}/mailFolders/inbox"
GET_INBOX = (
    "<m:GetFolder><m:FolderShape><t:BaseShape>IdOnly</t:BaseShape></m:FolderShape>"
    '<m:FolderIds><t:DistinguishedFolderId Id="inbox"/></m:FolderIds></m:GetFolder>'
)


def claims(token: str) -> dict[str, object]:
    payload = token.split(".")[1]
    decoded: dict[str, object] = json.loads(base64.urlsafe_b64decode(payload + "=" * 4))
    return decoded


def ews_post(world: World, http: httpx.Client, token: str, mailbox: str = ALICE) -> httpx.Response:
    envelope = (
        '<?xml version="1.0" encoding="utf-8"?>'
        '<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" '
        'xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages" '
        'xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types">'
        '<s:Header><t:RequestServerVersion Version="Exchange2016"/>'
        "<t:ExchangeImpersonation><t:ConnectingSID>"
        f"<t:PrimarySmtpAddress>{mailbox}</t:PrimarySmtpAddress>"
        "</t:ConnectingSID></t:ExchangeImpersonation></s:Header>"
        f"<s:Body>{GET_INBOX}</s:Body></s:Envelope>"
    )
    headers = {
        "Content-Type": "text/xml; charset=utf-8",
        "Authorization": f"Bearer {token}",
        "X-AnchorMailbox": mailbox,
    }
    return http.post(world.ews.url, content=envelope.encode(), headers=headers)


def assert_unauthorized(response: httpx.Response, message: str) -> None:
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["code"] == "InvalidAuthenticationToken"
    assert error["message"] == message
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith("Bearer ")
    assert 'client_id="00000003-0000-0000-c000-000000000000"' in challenge


def test_graph_scope_gives_graph_audience_and_mail_roles(token: TokenFactory) -> None:
    """A token for https://graph.microsoft.com/.default has aud Graph and the app's Graph roles."""
    graph_claims = claims(token(CLIENT_ID))
    assert graph_claims["aud"] == "https://graph.microsoft.com"
    assert graph_claims["roles"] == ["Mail.ReadWrite"]
    assert claims(token(READER_ID))["roles"] == ["Mail.Read"]
    ews_claims = claims(token(CLIENT_ID, EWS_SCOPE))
    assert ews_claims["aud"] == "https://outlook.office365.com"
    assert ews_claims["roles"] == ["full_access_as_app"]


def test_guid_audience_is_accepted(graph: GraphEmulator, world: World, call: Call) -> None:
    """Graph accepts its app id, 00000003-0000-0000-c000-000000000000, as the audience too."""
    guid = world.token_server.issue_token(TENANT, CLIENT_ID, audience=GRAPH_AUDIENCES[1])
    assert call("GET", INBOX, bearer=guid).status_code == 200


def test_missing_token_is_401(call: Call) -> None:
    """No Authorization header: 401 InvalidAuthenticationToken with a Bearer challenge."""
    response = call("GET", INBOX, headers={"Authorization": ""})
    assert_unauthorized(response, "Access token is empty.")


def test_expired_token_is_401(world: World, call: Call) -> None:
    """An expired Graph token: 401, the lifetime message."""
    expired = world.token_server.issue_token(
        TENANT, CLIENT_ID, audience=GRAPH_AUDIENCES[0], lifetime=-60
    )
    assert_unauthorized(
        call("GET", INBOX, bearer=expired), "Lifetime validation failed, the token is expired."
    )


def test_garbage_token_is_401(call: Call) -> None:
    """A token that is not a JWT: 401."""
    assert_unauthorized(call("GET", INBOX, bearer="not-a-jwt"), "Access token validation failure.")


def test_ews_token_on_graph_is_401(call: Call, token: TokenFactory) -> None:
    """A token for Exchange Online (EWS) is refused by Graph: 401 Invalid audience."""
    assert_unauthorized(call("GET", INBOX, bearer=token(CLIENT_ID, EWS_SCOPE)), "Invalid audience.")


def test_graph_token_on_ews_is_401(
    ews: EwsEmulator, world: World, http: httpx.Client, token: TokenFactory
) -> None:
    """A Graph token is refused by EWS as Exchange Online does: 401, 2000003 invalid_resource."""
    refused = ews_post(world, http, token(CLIENT_ID))
    assert refused.status_code == 401
    assert refused.headers["x-ms-diagnostics"].startswith("2000003;")
    assert 'error_category="invalid_resource"' in refused.headers["x-ms-diagnostics"]
    assert ews_post(world, http, token(CLIENT_ID, EWS_SCOPE)).status_code == 200


def test_no_mail_role_is_403(call: Call) -> None:
    """A Graph token without Mail.Read or Mail.ReadWrite: 403 ErrorAccessDenied."""
    response = call("GET", INBOX, client_id=NOROLE_ID)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "ErrorAccessDenied"


def test_mail_read_reads_but_does_not_write(call: Call) -> None:
    """Mail.Read lists folders; creating one needs Mail.ReadWrite (403 ErrorAccessDenied)."""
    assert call("GET", f"users/{ALICE}/mailFolders", client_id=READER_ID).status_code == 200
    response = call(
        "POST", f"{INBOX}/childFolders", client_id=READER_ID, json={"displayName": "Nope"}
    )
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "ErrorAccessDenied"
    created = call("POST", f"{INBOX}/childFolders", json={"displayName": "Yes"})
    assert created.status_code == 201


def test_scope_limits_graph_and_ews_alike(
    graph: GraphEmulator, world: World, call: Call, http: httpx.Client, token: TokenFactory
) -> None:
    """One scope table: an app scoped to Alice reads Alice, not Bob, through Graph and EWS."""
    world.ews.allow(SCOPED_ID, [ALICE])
    assert call("GET", INBOX, client_id=SCOPED_ID).status_code == 200
    denied = call("GET", f"users/{BOB}/mailFolders/inbox", client_id=SCOPED_ID)
    assert denied.status_code == 403
    assert denied.json()["error"]["code"] == "ErrorAccessDenied"
    assert denied.json()["error"]["message"] == "Access is denied. Check credentials and try again."
    ews_denied = ews_post(world, http, token(SCOPED_ID, EWS_SCOPE), mailbox=BOB)
    assert b"ErrorImpersonateUserDenied" in ews_denied.content
    assert call("GET", f"users/{BOB}/mailFolders/inbox").status_code == 200  # other apps


def test_graph_allow_is_the_same_table(graph: GraphEmulator, call: Call) -> None:
    """GraphEmulator.allow beside an EWS emulator writes the shared table."""
    graph.allow(SCOPED_ID, [BOB])
    assert call("GET", INBOX, client_id=SCOPED_ID).status_code == 403
    assert graph.scopes.allowed(SCOPED_ID, BOB)


@pytest.mark.parametrize("client_id", [CLIENT_ID, READER_ID])
def test_request_log_names_the_app(graph: GraphEmulator, call: Call, client_id: str) -> None:
    """The request log records operation, mailbox, method, template, status and the app."""
    call("GET", INBOX, client_id=client_id)
    record = graph.request_log[-1]
    assert (record.operation, record.mailbox, record.method, record.status) == (
        "user_GetMailFolder",
        ALICE,
        "GET",
        200,
    )
    assert record.template == "/users/{user-id}/mailFolders/{mailFolder-id}"
    assert record.client_id == client_id
    assert record.duration > 0
