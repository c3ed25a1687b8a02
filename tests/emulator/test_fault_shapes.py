"""Faults and 401s in the shapes Exchange Online sends (ews-samples/from-clients; issue 11, 17).

The samples are read from ``../shared/ews-samples`` (never copied into the project).
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from exchangelib.errors import UnauthorizedError
from lxml import etree

from ews_listener_emulators.faults import render
from ews_listener_emulators.server import EwsEmulator
from ews_listener_emulators.soap import ENS, SOAPNS, TNS, Fault
from ews_listener_emulators.token_server import TokenServer
from tests.emulator.conftest import (
    ALICE,
    BOB,
    SCOPED_CLIENT_ID,
    TENANT,
    AccountFactory,
    SoapPost,
)
from tests.emulator.test_auth import GET_INBOX

SAMPLES = Path(__file__).resolve().parents[2].parent / "shared" / "ews-samples" / "from-clients"
NOBODY = "nobody@contoso.com"


def _shape(root: etree._Element) -> list[tuple[str, tuple[str, ...], tuple[str, ...]]]:
    """Each element's name, the prefixes it declares itself, and its attribute names."""
    shape = []
    for element in root.iter(etree.Element):
        parent = element.getparent()
        inherited = parent.nsmap if parent is not None else {}
        declared = tuple(sorted(p or "" for p in element.nsmap if p not in inherited))
        shape.append((etree.QName(element).localname, declared, tuple(sorted(element.attrib))))
    return shape


def _faultcode_namespace(fault: etree._Element) -> str | None:
    """The namespace the prefix of ``faultcode``'s QName text is bound to, or None if unbound."""
    code = fault.find("faultcode")
    assert code is not None
    assert code.text is not None
    prefix, _, _ = code.text.strip().partition(":")
    return code.nsmap.get(prefix)


def _fault_of(content: bytes) -> etree._Element:
    root = etree.fromstring(content)
    assert root.find(f"{{{SOAPNS}}}Header") is None, "real faults carry no s:Header"
    fault = root.find(f"{{{SOAPNS}}}Body/{{{SOAPNS}}}Fault")
    assert fault is not None
    return fault


def test_fault_faultcode_prefix_is_declared(soap: SoapPost) -> None:
    """``a:ErrorNonExistentMailbox`` comes with its ``xmlns:a``; the envelope has no s:Header."""
    response = soap(GET_INBOX, mailbox=NOBODY)
    assert response.status_code == 500
    fault = _fault_of(response.content)
    assert fault.findtext("faultcode") == "a:ErrorNonExistentMailbox"
    assert _faultcode_namespace(fault) == TNS


def test_server_busy_fault_has_the_sample_shape() -> None:
    """ErrorServerBusy with BackOffMilliseconds matches the captured fault element for element."""
    sample = etree.parse(str(SAMPLES / "exchangelib.ErrorServerBusy.BackOffMilliseconds.fault.xml"))
    ours = render(Fault(kind="server_busy", back_off_ms=297749), "GetFolder").body
    assert _shape(etree.fromstring(ours)) == _shape(sample.getroot())
    assert _faultcode_namespace(_fault_of(ours)) == TNS


def test_non_existent_mailbox_fault_names_the_smtp_address(soap: SoapPost) -> None:
    """Impersonating a missing mailbox: Exchange's text and ``t:Value Name="SmtpAddress"``."""
    fault = _fault_of(soap(GET_INBOX, mailbox=NOBODY).content)
    assert fault.findtext(f"detail/{{{ENS}}}ResponseCode") == "ErrorNonExistentMailbox"
    text = "The SMTP address has no mailbox associated with it."
    assert fault.findtext("faultstring") == text
    assert fault.findtext(f"detail/{{{ENS}}}Message") == text
    values = fault.findall(f"detail/{{{TNS}}}MessageXml/{{{TNS}}}Value")
    assert [(v.get("Name"), v.text) for v in values] == [("SmtpAddress", NOBODY)]


FIND_IN = (
    "<m:FindItem Traversal='Shallow'><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape></m:ItemShape>"
    "<m:ParentFolderIds><t:DistinguishedFolderId Id='inbox'><t:Mailbox>"
    "<t:EmailAddress>{address}</t:EmailAddress></t:Mailbox></t:DistinguishedFolderId>"
    "</m:ParentFolderIds></m:FindItem>"
)


def _message(content: bytes) -> etree._Element:
    root = etree.fromstring(content)
    found = root.find(".//{*}FindItemResponseMessage")
    assert found is not None
    return found


def test_per_message_non_existent_mailbox_uses_exchange_wording(soap: SoapPost) -> None:
    """A response message for another, missing mailbox: Exchange's text and its SmtpAddress."""
    message = _message(soap(FIND_IN.format(address=NOBODY)).content)
    assert message.findtext("{*}ResponseCode") == "ErrorNonExistentMailbox"
    assert message.findtext("{*}MessageText") == (
        "The SMTP address has no mailbox associated with it."
    )
    values = message.findall(f"{{*}}MessageXml/{{{TNS}}}Value")
    assert [(v.get("Name"), v.text) for v in values] == [("SmtpAddress", NOBODY)]


def test_per_message_access_denied_uses_exchange_wording(
    emu: EwsEmulator, soap: SoapPost, token_server: TokenServer
) -> None:
    """A response message for a mailbox outside the app's scope says what Exchange says."""
    emu.allow(SCOPED_CLIENT_ID, [ALICE])
    token = token_server.issue_token(TENANT, SCOPED_CLIENT_ID)
    message = _message(soap(FIND_IN.format(address=BOB), token=token).content)
    assert message.findtext("{*}ResponseCode") == "ErrorAccessDenied"
    assert message.findtext("{*}MessageText") == (
        "Access is denied. Check credentials and try again."
    )


def test_wrong_audience_gets_2000003_invalid_resource(emu: EwsEmulator, soap: SoapPost) -> None:
    """A token for another resource gets Exchange Online's 2000003 diagnostics, verbatim."""
    previous, emu.audience = emu.audience, "https://ews.contoso.example"
    try:
        response = soap(GET_INBOX)
    finally:
        emu.audience = previous
    assert response.status_code == 401
    assert response.headers["x-ms-diagnostics"] == (
        "2000003;reason=\"The audience claim value is invalid 'aud'.\";"
        'error_category="invalid_resource"'
    )


def test_token_without_role_gets_401_invalid_grant(
    soap: SoapPost, make_account: AccountFactory, token_server: TokenServer
) -> None:
    """No full_access_as_app role: HTTP 401 with 2000008/invalid_grant, not a 500 fault."""
    token = token_server.issue_token(TENANT, SCOPED_CLIENT_ID, roles=["Mail.Read"])
    response = soap(GET_INBOX, token=token)
    assert (response.status_code, response.content) == (401, b"")
    diagnostics = response.headers["x-ms-diagnostics"]
    assert diagnostics.startswith("2000008;reason=")
    assert diagnostics.endswith('error_category="invalid_grant"')
    with pytest.raises(UnauthorizedError):
        make_account(roles=("Mail.Read",)).inbox.refresh()


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_challenge_carries_authorization_uri(
    emu: EwsEmulator, soap: SoapPost, token_server: TokenServer, method: str
) -> None:
    """``WWW-Authenticate`` names the authority, as Exchange Online's does, for GET and POST."""

    if method == "POST":
        response = soap(GET_INBOX, token="not-a-jwt")
    else:
        ca = emu.ca
        assert ca is not None
        response = httpx.get(emu.url, verify=ca.client_context(), trust_env=False)
    assert response.status_code == 401
    challenge = response.headers["WWW-Authenticate"]
    assert f'authorization_uri="{token_server.url}/common/oauth2/authorize"' in challenge
    assert challenge.endswith('error="invalid_token"')
