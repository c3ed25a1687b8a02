"""Graph ids for the mail store's records.

Graph (REST) ids are the EWS ids in URL-safe base64 (``+`` → ``-``, ``/`` → ``_``), as Exchange's
REST ids are; an item moved in the store gets a new EWS id, so its REST id changes too. With
``Prefer: IdType="ImmutableId"`` an item is named by ``Item.immutable_id``, given once when the
item is created and kept by every move within its mailbox (a copy gets a new one).
Folders have ids of their own and the well-known names (``inbox``, ``deleteditems``, ``drafts``,
``sentitems``, ``junkemail``, ``archive``, ``msgfolderroot``) in any case.
"""

from __future__ import annotations

from ews_listener_emulators.store import Folder, Item, Mailbox, MailStore

__all__ = [
    "WELL_KNOWN",
    "folder_for",
    "folder_id",
    "item_for",
    "item_id",
    "to_ews_id",
    "to_rest_id",
]

WELL_KNOWN = (
    "inbox",
    "deleteditems",
    "drafts",
    "sentitems",
    "junkemail",
    "archive",
    "msgfolderroot",
)

# Graph's ``archive`` is the Archive folder of the primary mailbox (Outlook's Archive button), which
# the store files under EWS's distinguished id ``archivemsgfolderroot`` (display name "Archive").
_STORE_NAMES = {"archive": "archivemsgfolderroot"}


def to_rest_id(ews_id: str) -> str:
    return ews_id.replace("+", "-").replace("/", "_")


def to_ews_id(rest_id: str) -> str:
    return rest_id.replace("-", "+").replace("_", "/")


def item_id(item: Item, *, immutable: bool) -> str:
    """The id a client is given for ``item``."""
    return item.immutable_id if immutable else to_rest_id(item.item_id)


def item_for(store: MailStore, mailbox: Mailbox, graph_id: str) -> Item | None:
    """The filed item of ``mailbox`` named by a REST id or an immutable id, or None."""
    found = store.item(mailbox, to_ews_id(graph_id))
    if found is not None:
        return found
    return store.item_by_immutable_id(mailbox, graph_id)


def folder_id(folder: Folder) -> str:
    return to_rest_id(folder.folder_id)


def folder_for(store: MailStore, mailbox: Mailbox, token: str) -> Folder | None:
    """A folder by REST id or well-known name (any case), or None."""
    if token.lower() in WELL_KNOWN:
        return store.folder(mailbox, _STORE_NAMES.get(token.lower(), token.lower()))
    return store.folder(mailbox, to_ews_id(token))
