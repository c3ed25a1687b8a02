"""Helpers shared by the operation modules: folder and item id resolution."""

from __future__ import annotations

from lxml import etree

from ews_listener_emulators.mailstore.model import well_formed_id
from ews_listener_emulators.ops import OpContext
from ews_listener_emulators.soap import ACCESS_DENIED_TEXT, NON_EXISTENT_MAILBOX_TEXT, t
from ews_listener_emulators.store import Folder, Item, Mailbox, StoreError

__all__ = [
    "FOLDER_NOT_FOUND",
    "ITEM_NOT_FOUND",
    "bool_text",
    "find_item",
    "item_refs",
    "resolve_folder",
]

FOLDER_NOT_FOUND = "The specified folder could not be found in the store."
ITEM_NOT_FOUND = "The specified object was not found in the store."


def bool_text(value: str | None, default: bool = False) -> bool:
    """An ``xs:boolean``: ``true``/``false`` or ``1``/``0`` (both arrive from clients)."""
    if value is None:
        return default
    return value.strip().lower() in ("true", "1")


def _mailbox_for(ctx: OpContext, element: etree._Element) -> Mailbox:
    assert ctx.mailbox is not None
    named = element.findtext(f"{t('Mailbox')}/{t('EmailAddress')}")
    if named and named.strip().lower() != ctx.mailbox.address.lower():
        other = ctx.store.mailbox(named.strip())
        if other is None:
            raise StoreError(
                "ErrorNonExistentMailbox",
                NON_EXISTENT_MAILBOX_TEXT,
                {"SmtpAddress": named.strip()},
            )
        if not ctx.emulator.allowed(ctx.client_id, other.address):
            raise StoreError("ErrorAccessDenied", ACCESS_DENIED_TEXT)
        return other
    return ctx.mailbox


def resolve_folder(ctx: OpContext, element: etree._Element) -> Folder:
    """The folder a ``t:FolderId`` / ``t:DistinguishedFolderId`` names; raises ``StoreError``."""
    mailbox = _mailbox_for(ctx, element)
    folder_id = element.get("Id") or ""
    if element.tag == t("DistinguishedFolderId"):
        found = mailbox.distinguished.get(folder_id)
        if found is None:
            raise StoreError("ErrorFolderNotFound", FOLDER_NOT_FOUND)
        return found
    if not well_formed_id(folder_id, b"F"):
        raise StoreError("ErrorInvalidIdMalformed", "Id is malformed.")
    found = ctx.store.folder(mailbox, folder_id)
    if found is None:
        raise StoreError("ErrorFolderNotFound", FOLDER_NOT_FOUND)
    return found


def item_refs(container: etree._Element | None) -> list[tuple[str, str | None]]:
    """(id, change key) of each ``t:ItemId`` in ``container``."""
    if container is None:
        return []
    return [(e.get("Id") or "", e.get("ChangeKey")) for e in container if e.tag == t("ItemId")]


def find_item(ctx: OpContext, item_id: str) -> Item:
    """The item ``item_id`` of the impersonated mailbox.

    Raises ``ErrorInvalidIdMalformed`` for an id that is not one of ours, ``ErrorItemNotFound``
    for one that names no item of this mailbox (deleted, moved away, another mailbox's).
    """
    assert ctx.mailbox is not None
    if not well_formed_id(item_id, b"I"):
        raise StoreError("ErrorInvalidIdMalformed", "Id is malformed.")
    item = ctx.store.item(ctx.mailbox, item_id)
    if item is None:
        raise StoreError("ErrorItemNotFound", ITEM_NOT_FOUND)
    return item
