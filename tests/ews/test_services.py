"""The EWS source's exchangelib services send exchangelib's own requests, byte for byte, and read
the answers as the stock services do (``listener/sources/ews/_services.py``). The emulator checks
every request and answer against the EWS schema (the ``emu`` fixture fails a test otherwise)."""

from __future__ import annotations

from exchangelib import Message as EwsMessage
from exchangelib.items import ALWAYS_OVERWRITE, ID_ONLY, SAVE_ONLY, SEND_TO_NONE
from exchangelib.services import GetItem, SyncFolderItems, UpdateItem
from exchangelib.util import xml_to_str

from ews_listener_emulators.server import EwsEmulator
from listener.sources.ews._convert import FETCH_FIELDS
from listener.sources.ews._services import (
    CreatedItems,
    ItemShape,
    MarkRead,
    MessageGetItem,
    SyncPrefix,
)
from tests.emulator.conftest import ALICE, AccountFactory
from tests.graph_source.mail import plain

_IDS: list[tuple[str, str | None]] = [
    ("AAMkAGI2TG93AAA=", None),
    ("AAMkAGI2TG93AAB=", "CQAAABYAAAD"),
    ("AAMkAGI2&<\"'>=", None),
]


def test_get_item_sends_what_account_fetch_sends(make_account: AccountFactory) -> None:
    """MessageGetItem's payload is GetItem's for the same ids and fields."""
    account = make_account()
    shape = ItemShape(account, FETCH_FIELDS)
    service = MessageGetItem(account=account, chunk_size=3)
    service._shape = shape  # as fetch() sets it: the prebuilt shape goes in
    ours = [
        service.get_payload(items=_IDS, additional_fields=shape.additional_fields, shape=ID_ONLY)
        for _ in range(2)  # the prebuilt element is copied, not moved
    ]
    stock = GetItem(account=account, chunk_size=3).get_payload(
        items=_IDS, additional_fields=shape.additional_fields, shape=ID_ONLY
    )
    assert [xml_to_str(p) for p in ours] == [xml_to_str(stock)] * 2


def _update_kwargs() -> dict[str, object]:
    return {
        "conflict_resolution": ALWAYS_OVERWRITE,
        "message_disposition": SAVE_ONLY,
        "send_meeting_invitations_or_cancellations": SEND_TO_NONE,
        "suppress_read_receipts": True,
    }


def test_mark_read_sends_what_bulk_update_sends(make_account: AccountFactory) -> None:
    """MarkRead's payload is UpdateItem's for Message(is_read=True) of each id."""
    account = make_account()
    items = [
        (EwsMessage(account=account, id=i, changekey=ck, is_read=True), ["is_read"])
        for i, ck in _IDS
    ]
    stock = UpdateItem(account=account).get_payload(items=items, **_update_kwargs())
    ours = MarkRead(account=account).get_payload(items=_IDS, **_update_kwargs())
    assert xml_to_str(ours) == xml_to_str(stock)


def test_mark_read_and_sync_against_the_emulator(
    emu: EwsEmulator, make_account: AccountFactory
) -> None:
    """Through the schema-checking emulator: CreatedItems lists what SyncFolderItems lists,
    MarkRead marks each item read and answers per item, GetItem returns one element per id."""
    for n in range(5):
        emu.deliver(ALICE, plain(f"services {n}"))
    account = make_account()
    folder = account.inbox

    def sync(service: type[SyncFolderItems], state: str | None) -> list[tuple[str, object]]:
        return list(
            service(account=account).call(
                folder=folder,
                shape=ID_ONLY,
                additional_fields=set(),
                sync_state=state,
                ignore=None,
                max_changes_returned=512,
                sync_scope=None,
            )
        )

    stock = sync(SyncFolderItems, None)
    ours = sync(CreatedItems, None)
    assert [(t, i) for t, i in ours] == [(t, item.id) for t, item in stock]
    ids = [(i, None) for _, i in ours if isinstance(i, str)]
    assert len(ids) == 5
    elements = list(
        MessageGetItem(account=account, chunk_size=5).fetch(
            [*ids, ("AAMkAGdvbmU=", None)], ItemShape(account, FETCH_FIELDS)
        )
    )
    assert [e.tag.rsplit("}", 1)[1] for e in elements[:5]] == ["Message"] * 5
    assert isinstance(elements[5], Exception)  # a vanished item: its error, in its place
    results = list(MarkRead(account=account).mark([*ids[:4], ("AAMkAGdvbmU=", None)]))
    assert all(isinstance(r, tuple) for r in results[:4])
    # each answer is the item's (id, new changekey), as Item.id_from_xml reads it
    stored = {i.item_id: i.change_key for i in emu.items(ALICE, "inbox")}
    assert results[:4] == [(i, stored[i]) for i, _ in ids[:4]]
    assert isinstance(results[4], Exception)
    assert sorted(not i.is_read for i in emu.items(ALICE, "inbox")) == [False] * 4 + [True]


def test_sync_with_ignore_sends_what_sync_folder_items_sends(make_account: AccountFactory) -> None:
    """CreatedItems' payload, m:Ignore included, is SyncFolderItems' for the same arguments."""
    account = make_account()
    folder = account.inbox

    def payload(service: type[SyncFolderItems], ignore: object) -> str:
        return xml_to_str(
            service(account=account).get_payload(
                folder=folder,
                shape=ID_ONLY,
                additional_fields=set(),
                sync_state="H4sIAAAAAAAEAGNgYGBk",
                ignore=ignore,
                max_changes_returned=512,
                sync_scope=None,
            )
        )

    for ignore in (None, [], _IDS):
        assert payload(CreatedItems, ignore) == payload(SyncFolderItems, ignore)
    assert "Ignore" in payload(CreatedItems, _IDS)


def test_sync_with_a_prefix_sends_what_sync_folder_items_sends(
    make_account: AccountFactory,
) -> None:
    """The source's SyncPrefix (shape and folder id built once) changes no byte: with and
    without a sync state, with and without m:Ignore, and twice from one prefix."""
    account = make_account()
    folder = account.inbox
    prefix = SyncPrefix(CreatedItems(account=account), folder)

    def payload(service: type[SyncFolderItems], state: str | None, ignore: object) -> str:
        svc = service(account=account)
        if isinstance(svc, CreatedItems):
            svc.prefix = prefix
        return xml_to_str(
            svc.get_payload(
                folder=folder,
                shape=ID_ONLY,
                additional_fields=set(),
                sync_state=state,
                ignore=ignore,
                max_changes_returned=512,
                sync_scope=None,
            )
        )

    for state in (None, "H4sIAAAAAAAEAGNgYGBk"):
        for ignore in (None, _IDS):
            for _ in range(2):
                assert payload(CreatedItems, state, ignore) == payload(
                    SyncFolderItems, state, ignore
                )
    assert "SyncState" in payload(CreatedItems, "H4sIAAAAAAAEAGNgYGBk", None)
    assert "SyncState" not in payload(CreatedItems, None, None)
