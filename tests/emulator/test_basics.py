"""Version guessing, folders and the request log, through the real exchangelib."""

from __future__ import annotations

import pytest
from exchangelib import Account, Message
from exchangelib.folders import Inbox

from ews_listener_emulators.server import EwsEmulator
from tests.emulator.conftest import ALICE, AccountFactory, SoapPost, simple_mime


def test_version_guess_reads_exchange2016(make_account: AccountFactory) -> None:
    """An unpinned Configuration guesses the version with ConvertId and gets Exchange2016."""
    account = make_account(pinned=False)
    assert account.version.api_version == "Exchange2016"
    assert (account.version.build.major_version, account.version.build.minor_version) == (15, 1)


def test_inbox_is_resolved_with_counts(emu: EwsEmulator, make_account: AccountFactory) -> None:
    """account.inbox is the Inbox folder and reports its total and unread counts."""
    emu.deliver(ALICE, simple_mime("one"))
    emu.deliver(ALICE, simple_mime("two"), is_read=True)
    inbox = make_account().inbox
    assert isinstance(inbox, Inbox)
    inbox.refresh()
    assert (inbox.total_count, inbox.unread_count) == (2, 1)


def test_folder_paths_and_create_folder(emu: EwsEmulator, make_account: AccountFactory) -> None:
    """User folders made by the admin API and by exchangelib both appear in the tree."""
    emu.create_folder(ALICE, "inbox/Processed")
    account = make_account()
    processed = account.inbox / "Processed"
    assert processed.name == "Processed"
    from exchangelib import Folder

    failed = Folder(parent=account.inbox, name="Failed")
    failed.save()
    assert [v.subject for v in emu.items(ALICE, "inbox/Failed")] == []
    assert failed.id in {f.id for f in account.inbox.children}


def test_request_log_records_operation_and_mailbox(
    emu: EwsEmulator, make_account: AccountFactory
) -> None:
    """Every request is logged with its operation, mailbox, status and validity."""
    make_account().inbox.refresh()
    record = emu.request_log[-1]
    assert (record.operation, record.mailbox, record.status) == ("GetFolder", ALICE, 200)
    assert record.duration > 0


def test_create_item_save_only_and_copy(emu: EwsEmulator, make_account: AccountFactory) -> None:
    """CreateItem SaveOnly files a message; CopyItem gives the copy a new id."""
    account: Account = make_account()
    message = Message(account=account, folder=account.inbox, subject="seeded", body="x")
    message.save()
    views = emu.items(ALICE, "inbox")
    assert [v.subject for v in views] == ["seeded"]
    copied = message.copy(to_folder=account.junk)
    assert copied is None or copied[0] != message.id
    assert [v.subject for v in emu.items(ALICE, "junkemail")] == ["seeded"]


def test_unknown_operation_gets_invalid_request_fault(soap: SoapPost) -> None:
    """An operation the emulator does not implement gets ErrorInvalidRequest, not a crash."""
    response = soap(
        "<m:GetUserOofSettingsRequest><t:Mailbox><t:Address>alice@contoso.com</t:Address>"
        "</t:Mailbox></m:GetUserOofSettingsRequest>"
    )
    assert response.status_code == 500
    assert b"a:ErrorInvalidRequest" in response.content


def test_schema_invalid_request_gets_schema_validation_fault(
    emu: EwsEmulator, soap: SoapPost
) -> None:
    """A request that breaks ews.xsd gets ErrorSchemaValidation and is logged as invalid."""
    if emu.validator is None:
        return
    response = soap("<m:GetUserOofSettingsRequest/>")
    assert response.status_code == 500
    assert b"ErrorSchemaValidation" in response.content
    assert b"<t:Violation>" in response.content
    assert emu.request_log[-1].schema_valid is False
    emu.request_log.clear()  # the deliberate failure must not fail the suite's schema check


def test_every_response_carries_server_version_info(soap: SoapPost) -> None:
    """Responses (even errors) carry t:ServerVersionInfo with Exchange Online's version."""
    response = soap(
        "<m:GetFolder><m:FolderShape><t:BaseShape>IdOnly</t:BaseShape></m:FolderShape>"
        '<m:FolderIds><t:DistinguishedFolderId Id="inbox"/></m:FolderIds></m:GetFolder>'
    )
    assert response.status_code == 200
    assert b'Version="V2017_07_11"' in response.content
    assert b"ServerVersionInfo" in response.content


def test_folder_tree_walk(emu: EwsEmulator, make_account: AccountFactory) -> None:
    """FindFolder Deep from the root lists distinguished and nested user folders."""
    emu.create_folder(ALICE, "inbox/Orders/2026")
    emu.create_folder(ALICE, "Archive Box")
    account = make_account()
    names = {f.name for f in account.root.walk()}
    assert {"Inbox", "Deleted Items", "Orders", "2026", "Archive Box"} <= names
    assert (account.inbox / "Orders" / "2026").name == "2026"
    assert account.trash.name == "Deleted Items"


def test_ca_trust_survives_requests_ca_bundle(
    make_account: AccountFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The adapter trusts the emulator CA even when REQUESTS_CA_BUNDLE names another bundle."""
    import certifi

    monkeypatch.setenv("REQUESTS_CA_BUNDLE", certifi.where())
    monkeypatch.setenv("CURL_CA_BUNDLE", certifi.where())
    assert make_account().inbox.name == "Inbox"
