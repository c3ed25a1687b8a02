"""SyncFolderItems through exchangelib: pages, updates, deletes, read flags, bad states."""

from __future__ import annotations

import base64

import pytest
from exchangelib.errors import ErrorInvalidSyncStateData
from exchangelib.folders import Inbox

from ews_listener_emulators.server import EwsEmulator
from tests.emulator.conftest import ALICE, AccountFactory, SoapPost, simple_mime


def _sync(inbox: Inbox, state: str | None, page: int = 512) -> tuple[list[tuple[str, str]], str]:
    """Run one full sync from ``state``: (change kind, item id) pairs and the new state."""
    changes: list[tuple[str, str]] = []
    for kind, value in inbox.sync_items(
        sync_state=state, only_fields=["subject", "is_read"], max_changes_returned=page
    ):
        target = value[0] if isinstance(value, tuple) else value  # read_flag_change: (id, flag)
        changes.append((kind, target if isinstance(target, str) else target.id))
    return changes, inbox.item_sync_state


def test_initial_sync_pages_through_all_items(
    emu: EwsEmulator, make_account: AccountFactory
) -> None:
    """A first sync over 1,100 items pages (512 at most) and reports each item once as create."""
    ids = [emu.deliver(ALICE, simple_mime(f"m{i}")) for i in range(1100)]
    inbox = make_account().inbox
    changes, state = _sync(inbox, None)
    assert [k for k, _ in changes] == ["create"] * 1100
    assert {i for _, i in changes} == set(ids)
    pages = [r for r in emu.request_log if r.operation == "SyncFolderItems"]
    assert len(pages) == 3
    again, _ = _sync(inbox, state)
    assert again == []


def test_small_pages_resume_exactly(emu: EwsEmulator, make_account: AccountFactory) -> None:
    """With 3 changes a page, the sync state carries the position from page to page."""
    ids = [emu.deliver(ALICE, simple_mime(f"m{i}")) for i in range(10)]
    changes, _ = _sync(make_account().inbox, None, page=3)
    assert [i for _, i in changes] == ids


def test_changes_after_update_delete_and_read_flag(
    emu: EwsEmulator, make_account: AccountFactory
) -> None:
    """After a sync, a read-flag change, an update, a delete and a delivery are all reported."""
    first, second, third = (emu.deliver(ALICE, simple_mime(f"m{i}")) for i in range(3))
    account = make_account()
    inbox = account.inbox
    _, state = _sync(inbox, None)
    items = {i.id: i for i in inbox.all()}
    items[first].is_read = True
    items[first].save(update_fields=["is_read"])
    items[second].categories = ["Blue"]
    items[second].save(update_fields=["categories"])
    items[third].delete()
    fourth = emu.deliver(ALICE, simple_mime("new"))
    changes, state = _sync(inbox, state)
    assert sorted(changes) == sorted(
        [
            ("read_flag_change", first),
            ("update", second),
            ("delete", third),
            ("create", fourth),
        ]
    )
    assert _sync(inbox, state)[0] == []


def test_created_then_deleted_between_syncs_is_not_reported(
    emu: EwsEmulator, make_account: AccountFactory
) -> None:
    """An item delivered and hard-deleted between two syncs does not appear at all."""
    account = make_account()
    inbox = account.inbox
    _, state = _sync(inbox, None)
    doomed = emu.deliver(ALICE, simple_mime("gone"))
    account.bulk_delete(ids=[(doomed, None)], delete_type="HardDelete")
    assert _sync(inbox, state)[0] == []


def test_ignore_list_skips_items(emu: EwsEmulator, make_account: AccountFactory) -> None:
    """Items in the Ignore list are not reported."""
    from exchangelib.properties import ItemId

    ids = [emu.deliver(ALICE, simple_mime(f"m{i}")) for i in range(3)]
    inbox = make_account().inbox
    found = [v.id for _, v in inbox.sync_items(only_fields=["subject"], ignore=[ItemId(id=ids[1])])]
    assert found == [ids[0], ids[2]]


@pytest.mark.parametrize(
    "state",
    [
        "garbage!",
        base64.b64encode(b"\x01" + b"\x00" * 16 + b"x" * 16).decode(),
    ],
)
def test_bad_sync_state_raises_invalid_sync_state_data(
    make_account: AccountFactory, state: str
) -> None:
    """A forged or corrupt sync state raises ErrorInvalidSyncStateData."""
    inbox = make_account().inbox
    with pytest.raises(ErrorInvalidSyncStateData):
        _sync(inbox, state)


def test_tampered_sync_state_is_rejected(emu: EwsEmulator, make_account: AccountFactory) -> None:
    """Flipping a bit of a genuine state fails the HMAC check; other folders' states fail too."""
    emu.deliver(ALICE, simple_mime("x"))
    account = make_account()
    _, state = _sync(account.inbox, None)
    raw = bytearray(base64.b64decode(state))
    raw[10] ^= 1
    with pytest.raises(ErrorInvalidSyncStateData):
        _sync(account.inbox, base64.b64encode(bytes(raw)).decode())
    with pytest.raises(ErrorInvalidSyncStateData):
        list(account.junk.sync_items(sync_state=state))


def test_invalid_state_answer_has_empty_sync_state(soap: SoapPost) -> None:
    """The error response carries an empty SyncState element, as Exchange sends it."""
    response = soap(
        "<m:SyncFolderItems><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape></m:ItemShape>"
        '<m:SyncFolderId><t:DistinguishedFolderId Id="inbox"/></m:SyncFolderId>'
        "<m:SyncState>bm9wZQ==</m:SyncState><m:MaxChangesReturned>10</m:MaxChangesReturned>"
        "</m:SyncFolderItems>"
    )
    assert b"ErrorInvalidSyncStateData" in response.content
    assert (
        b"<m:SyncState/>" in response.content or b"<m:SyncState></m:SyncState>" in response.content
    )


@pytest.mark.parametrize("count", ["0", "513"])
def test_max_changes_returned_is_enforced(emu: EwsEmulator, soap: SoapPost, count: str) -> None:
    """MaxChangesReturned outside 1-512 is refused with ErrorSchemaValidation."""
    response = soap(
        "<m:SyncFolderItems><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape></m:ItemShape>"
        '<m:SyncFolderId><t:DistinguishedFolderId Id="inbox"/></m:SyncFolderId>'
        f"<m:MaxChangesReturned>{count}</m:MaxChangesReturned></m:SyncFolderItems>"
    )
    assert response.status_code == 500
    assert b"ErrorSchemaValidation" in response.content
    emu.request_log.clear()  # the deliberate failure must not fail the suite's schema check
