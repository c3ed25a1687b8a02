"""exchangelib's services with the parts the listener does not need taken out of the hot path.

The requests are exchangelib's own, byte for byte (``tests/ews/test_services.py`` compares each
payload with the stock service's); what changes is how much of exchangelib's object model each
exchange builds. On a loopback poll of 5,000 messages these three were ~75 % of the daemon's CPU
(benchmarks/README.md, "CPU per message"):

- ``MessageGetItem``: GetItem whose items stay XML elements; ``_convert.to_message`` reads them
  (exchangelib's ``Message.from_xml`` builds ~70 fields through descriptors per item). The item
  ids go into the request without an ``ItemId`` object each.
- ``CreatedItems``: SyncFolderItems that yields ``(change type, item id)``: exchangelib builds a
  ``Message`` for every change of an ``IdOnly`` sync just to hold its id. Its ``m:Ignore`` ids
  (the source's own tidied items, ``EwsMailSource.changes``) are written without an ``ItemId``
  object each: the list can hold thousands.
- ``MarkRead``: UpdateItem setting ``IsRead``: every ``t:ItemChange`` of a batch is the same but
  for the item id, so exchangelib builds the first from a ``Message`` and the rest are copies of
  it; the answers are read as ids only (``Item.id_from_xml``, as the stock service does).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator
from typing import Any

from exchangelib import Message as EwsMessage
from exchangelib.items import ALWAYS_OVERWRITE, ID_ONLY, SAVE_ONLY, SEND_TO_NONE
from exchangelib.properties import ItemId
from exchangelib.services import GetItem, SyncFolderItems, UpdateItem
from exchangelib.services.common import shape_element
from exchangelib.util import TNS, add_xml_child, create_element
from lxml import etree

__all__ = ["CreatedItems", "ItemShape", "MarkRead", "MessageGetItem", "SyncPrefix", "fetch_fields"]

_ITEM_ID = ItemId.response_tag()
_T_ITEM_ID = f"{{{TNS}}}ItemId"


def _item_ids(tag: str, ids: Iterable[tuple[str, str | None]]) -> Any:
    # exchangelib's item_ids_element builds an ItemId per id and serialises it: Id, then
    # ChangeKey when there is one. lxml's SubElement, not create_element per id: an m:Ignore
    # can hold thousands.
    container = create_element(tag)
    sub = etree.SubElement
    for item_id, changekey in ids:
        if changekey is None:
            sub(container, _T_ITEM_ID, {"Id": item_id})
        else:
            sub(container, _T_ITEM_ID, {"Id": item_id, "ChangeKey": changekey})
    return container


def fetch_fields(account: Any, only_fields: Iterable[str]) -> set[Any]:
    """The ``additional_fields`` ``Account.fetch(only_fields=…)`` asks GetItem for (its code)."""
    from exchangelib.folders import Folder  # noqa: PLC0415 - as Account.fetch does

    folder = Folder(root=account.root)
    fields = list(only_fields)
    for field in fields:
        folder.validate_item_field(field=field, version=account.version)
    return {f for f in folder.normalize_fields(fields=fields) if not f.field.is_attribute}


class ItemShape:
    """GetItem's ``m:ItemShape`` for ``only_fields``, built by exchangelib once per account (it
    expands and sorts every field path: ~5 % of a fetch's CPU when built per request)."""

    def __init__(self, account: Any, only_fields: Iterable[str]) -> None:
        self.additional_fields = fetch_fields(account, only_fields)
        self._element = shape_element(
            tag="m:ItemShape",
            shape=ID_ONLY,
            additional_fields=self.additional_fields,
            version=account.version,
        )

    def element(self) -> Any:
        """A copy to put in a request (appending an lxml element moves it)."""
        return copy.deepcopy(self._element)


class MessageGetItem(GetItem):  # type: ignore[misc]
    """GetItem whose items are the answer's XML elements (or the exception of a failed item)."""

    def fetch(self, ids: list[tuple[str, str | None]], shape: ItemShape) -> Iterator[Any]:
        """What ``Account.fetch(ids, only_fields=…)`` sends, as elements in the order of ids."""
        self._shape = shape
        return iter(self.call(items=ids, additional_fields=shape.additional_fields, shape=ID_ONLY))

    def _elem_to_obj(self, elem: Any) -> Any:
        return elem

    def get_payload(self, items: Any, additional_fields: Any, shape: Any) -> Any:
        payload = create_element(f"m:{self.SERVICE_NAME}")
        prebuilt: ItemShape | None = getattr(self, "_shape", None)
        if prebuilt is not None and prebuilt.additional_fields is additional_fields:
            payload.append(prebuilt.element())
        else:
            payload.append(
                shape_element(
                    tag="m:ItemShape",
                    shape=shape,
                    additional_fields=additional_fields,
                    version=self.account.version,
                )
            )
        payload.append(_item_ids("m:ItemIds", items))
        return payload


class SyncPrefix:
    """SyncFolderItems' ``m:ItemShape`` (``IdOnly``) and ``m:SyncFolderId`` for one folder, built
    by exchangelib once per source: the folder's id element goes through exchangelib's field
    machinery, ~15 % of an idle poll's request when built per request (issue 16)."""

    def __init__(self, service: SyncFolderItems, folder: Any) -> None:
        self.folder = folder
        self._element = service._partial_get_payload(
            folder=folder, shape=ID_ONLY, additional_fields=set(), sync_state=None
        )

    def element(self) -> Any:
        """A copy to put in a request (appending an lxml element moves it)."""
        return copy.deepcopy(self._element)


class CreatedItems(SyncFolderItems):  # type: ignore[misc]
    """SyncFolderItems yielding ``(change type, item id)``; the id is None but for creations.

    ``prefix``: a ``SyncPrefix`` of the folder, used when the request is ``IdOnly`` without
    additional fields (the source's every sync)."""

    prefix: SyncPrefix | None = None

    def _elem_to_obj(self, elem: Any) -> tuple[str, str | None]:
        change_type: str = self.change_types_map[elem.tag]
        item_id = None
        if change_type == self.CREATE:
            # the change holds one item element of its type, with its t:ItemId first
            found = elem[0].find(_ITEM_ID)
            item_id = None if found is None else found.get("Id") or None
        elem.clear()  # as exchangelib's from_xml does: the answer's tree shrinks as it is read
        return change_type, item_id

    def get_payload(
        self,
        folder: Any,
        shape: Any,
        additional_fields: Any,
        sync_state: Any,
        ignore: Any,
        max_changes_returned: Any,
        sync_scope: Any,
    ) -> Any:
        # SyncFolderItems.get_payload, with m:Ignore from (id, changekey) pairs
        prefix = self.prefix
        if (
            prefix is not None
            and prefix.folder is folder
            and shape == ID_ONLY
            and not additional_fields
        ):
            payload = prefix.element()
            if sync_state:
                add_xml_child(payload, "m:SyncState", sync_state)
        else:
            payload = self._partial_get_payload(
                folder=folder,
                shape=shape,
                additional_fields=additional_fields,
                sync_state=sync_state,
            )
        if ignore:
            payload.append(_item_ids("m:Ignore", ignore))
        add_xml_child(payload, "m:MaxChangesReturned", max_changes_returned)
        if sync_scope:
            add_xml_child(payload, "m:SyncScope", sync_scope)
        return payload


class MarkRead(UpdateItem):  # type: ignore[misc]
    """UpdateItem setting ``IsRead`` on items given as (id, changekey) pairs."""

    def mark(self, ids: list[tuple[str, str | None]]) -> Iterator[Any]:
        """What ``Account.bulk_update([(Message(id=…, is_read=True), ["is_read"]), …],
        conflict_resolution=ALWAYS_OVERWRITE, message_disposition=SAVE_ONLY,
        suppress_read_receipts=True)`` sends: per item the new (id, changekey) or the exception."""
        return iter(
            self.call(
                items=ids,
                conflict_resolution=ALWAYS_OVERWRITE,
                message_disposition=SAVE_ONLY,
                send_meeting_invitations_or_cancellations=SEND_TO_NONE,
                suppress_read_receipts=True,
            )
        )

    def _elem_to_obj(self, elem: Any) -> tuple[str | None, str | None]:
        # Item.id_from_xml without the descriptor lookups of ItemId's attribute names
        found = elem.find(_ITEM_ID)
        if found is None:
            return None, None
        return found.get("Id"), found.get("ChangeKey")

    def _changes_elem(self, target_changes: Iterable[tuple[str, str | None]]) -> Any:
        changes = create_element(self.CHANGES_ELEMENT_NAME)
        template = None
        for item_id, changekey in target_changes:
            if template is None:
                target = EwsMessage(account=self.account, id=item_id, changekey=changekey)
                target.is_read = True
                change = template = self._change_elem(target=target, fieldnames=["is_read"])
            else:
                change = copy.deepcopy(template)
                id_elem = change.find(_ITEM_ID)
                id_elem.attrib.clear()
                id_elem.set("Id", item_id)
                if changekey is not None:
                    id_elem.set("ChangeKey", changekey)
            changes.append(change)
        return changes
