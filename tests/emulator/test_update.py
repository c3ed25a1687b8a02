"""UpdateItem, MoveItem, CopyItem and DeleteItem through exchangelib's bulk operations."""

from __future__ import annotations

import pytest
from exchangelib import Account
from exchangelib.errors import ErrorIrresolvableConflict
from exchangelib.items import AUTO_RESOLVE, HARD_DELETE, MOVE_TO_DELETED_ITEMS, SOFT_DELETE

from ews_listener_emulators.server import EwsEmulator
from tests.emulator.conftest import ALICE, AccountFactory, SoapPost, simple_mime


def _fill(emu: EwsEmulator, count: int) -> list[str]:
    return [emu.deliver(ALICE, simple_mime(f"m{i}")) for i in range(count)]


def test_bulk_update_read_flag_and_change_keys(
    emu: EwsEmulator, make_account: AccountFactory
) -> None:
    """bulk_update marks items read and every update issues a new change key."""
    _fill(emu, 3)
    account: Account = make_account()
    items = list(account.inbox.all().only("is_read", "subject"))
    before = {v.item_id: v.change_key for v in emu.items(ALICE)}
    for item in items:
        item.is_read = True
    results = account.bulk_update([(item, ["is_read"]) for item in items])
    assert all(isinstance(r, tuple) for r in results)
    after = emu.items(ALICE)
    assert all(v.is_read for v in after)
    assert all(before[v.item_id] != v.change_key for v in after)
    assert {r[1] for r in results} == {v.change_key for v in after}


def test_update_categories_and_importance(emu: EwsEmulator, make_account: AccountFactory) -> None:
    """Categories and importance are set, then categories deleted with None."""
    _fill(emu, 1)
    item = next(iter(make_account().inbox.all()))
    item.categories = ["Processed", "Urgent"]
    item.importance = "High"
    item.save(update_fields=["categories", "importance"])
    item.refresh()
    assert (item.categories, item.importance) == (["Processed", "Urgent"], "High")
    item.categories = None
    item.save(update_fields=["categories"])
    assert emu.items(ALICE)[0].categories == ()


def test_append_categories_and_set_flag(emu: EwsEmulator, soap: SoapPost) -> None:
    """AppendToItemField adds categories; SetItemField sets the follow-up flag (item:Flag)."""
    (item_id,) = _fill(emu, 1)
    body = (
        '<m:UpdateItem MessageDisposition="SaveOnly" ConflictResolution="AlwaysOverwrite">'
        f'<m:ItemChanges><t:ItemChange><t:ItemId Id="{item_id}"/><t:Updates>'
        '<t:AppendToItemField><t:FieldURI FieldURI="item:Categories"/><t:Message>'
        "<t:Categories><t:String>Red</t:String></t:Categories></t:Message></t:AppendToItemField>"
        '<t:SetItemField><t:FieldURI FieldURI="item:Flag"/><t:Message><t:Flag>'
        "<t:FlagStatus>Flagged</t:FlagStatus></t:Flag></t:Message></t:SetItemField>"
        "</t:Updates></t:ItemChange></m:ItemChanges></m:UpdateItem>"
    )
    assert b"NoError" in soap(body).content
    assert b"NoError" in soap(body).content  # appending again does not duplicate
    assert emu.items(ALICE)[0].categories == ("Red",)
    item = emu.store.item(emu.store.mailbox(ALICE), item_id)  # type: ignore[arg-type]
    assert item is not None
    assert item.flag.status == "Flagged"


def test_stale_change_key_is_an_irresolvable_conflict(
    emu: EwsEmulator, make_account: AccountFactory
) -> None:
    """Updating with an old change key and AutoResolve raises ErrorIrresolvableConflict."""
    _fill(emu, 1)
    account = make_account()
    item = next(iter(account.inbox.all()))
    stale = item.changekey
    item.is_read = True
    item.save(update_fields=["is_read"])
    item.changekey = stale
    item.subject = "changed"
    with pytest.raises(ErrorIrresolvableConflict):
        item.save(update_fields=["subject"], conflict_resolution=AUTO_RESOLVE)
    item.save(update_fields=["subject"], conflict_resolution="AlwaysOverwrite")
    assert emu.items(ALICE)[0].subject == "changed"


def test_bulk_move_gives_new_ids(emu: EwsEmulator, make_account: AccountFactory) -> None:
    """bulk_move moves items to a user folder; they get new ids there, the old ones are gone."""
    old = _fill(emu, 4)
    emu.create_folder(ALICE, "inbox/Processed")
    account = make_account()
    processed = account.inbox / "Processed"
    results = account.bulk_move(ids=[(i, None) for i in old], to_folder=processed)
    new_ids = [r[0] for r in results]
    assert len(new_ids) == 4
    assert not set(new_ids) & set(old)
    assert {v.item_id for v in emu.items(ALICE, "inbox/Processed")} == set(new_ids)
    assert emu.items(ALICE) == []
    assert {v.folder for v in emu.items(ALICE, "inbox/Processed")} == {"Inbox/Processed"}


@pytest.mark.parametrize(
    ("delete_type", "lands_in"),
    [
        (MOVE_TO_DELETED_ITEMS, "deleteditems"),
        (SOFT_DELETE, "recoverableitemsdeletions"),
        (HARD_DELETE, None),
    ],
)
def test_bulk_delete_modes(
    emu: EwsEmulator, make_account: AccountFactory, delete_type: str, lands_in: str | None
) -> None:
    """bulk_delete moves to Deleted Items, to Recoverable Items, or removes for good."""
    ids = _fill(emu, 2)
    results = make_account().bulk_delete(ids=[(i, None) for i in ids], delete_type=delete_type)
    assert results == [True, True]
    assert emu.items(ALICE) == []
    if lands_in is not None:
        assert len(emu.items(ALICE, lands_in)) == 2
    else:
        assert emu.items(ALICE, "deleteditems") == []
        assert emu.items(ALICE, "recoverableitemsdeletions") == []


def test_delete_of_moved_item_is_item_not_found(
    emu: EwsEmulator, make_account: AccountFactory
) -> None:
    """An id is dead after a move: deleting by it reports ErrorItemNotFound."""
    from exchangelib.errors import ErrorItemNotFound

    (item_id,) = _fill(emu, 1)
    account = make_account()
    account.bulk_move(ids=[(item_id, None)], to_folder=account.junk)
    (result,) = account.bulk_delete(ids=[(item_id, None)])
    assert isinstance(result, ErrorItemNotFound)


def test_send_delivers_to_local_mailboxes(emu: EwsEmulator, make_account: AccountFactory) -> None:
    """send_and_save() delivers to a recipient mailbox of the emulator and keeps a sent copy."""
    from exchangelib import Message

    from tests.emulator.conftest import BOB

    account = make_account()
    Message(account=account, subject="ping", body="hi Bob", to_recipients=[BOB]).send_and_save()
    assert [v.subject for v in emu.items(BOB)] == ["ping"]
    assert emu.items(BOB)[0].is_read is False
    assert [v.subject for v in emu.items(ALICE, "sentitems")] == ["ping"]
