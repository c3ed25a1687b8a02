"""The emulator's in-memory mail store: mailboxes, folders, items, sync logs and event logs.

One re-entrant lock guards everything; ``changed`` is a ``Condition`` on that lock, notified after
every appended event, so notification operations can wait for new events without polling
(``wait_events``). Lookups are dictionaries and the per-folder change logs are append-only and
bisected, so 10k+ items per folder cost no quadratic work.

SyncFolderItems positions are change sequence numbers (CSN): every change in a mailbox takes the
next CSN, and each folder logs ``(csn, item id, op)``. A client's sync state is a CSN; ``sync``
replays the folder log after it (see its docstring for the paging rule).
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Iterable
from datetime import UTC, datetime

from ews_listener_emulators.mailstore.mime import parse_mime
from ews_listener_emulators.mailstore.model import (
    DISTINGUISHED_FOLDERS,
    Address,
    Attachment,
    Event,
    Flag,
    Folder,
    Item,
    ItemView,
    Mailbox,
    StoreError,
    SyncChange,
    item_element,
    new_id,
    new_immutable_id,
)

__all__ = [
    "DISTINGUISHED_FOLDERS",
    "Address",
    "Attachment",
    "Event",
    "Flag",
    "Folder",
    "Item",
    "ItemView",
    "MailStore",
    "Mailbox",
    "StoreError",
    "SyncChange",
    "item_element",
]


def _now() -> datetime:
    # Full precision: Exchange keeps sub-second times (and writes whole seconds on the wire,
    # ``_render.format_datetime``); cut to seconds, mail received in one second tied in sorts.
    return datetime.now(UTC)


class MailStore:
    """All mailboxes of one emulator. Every public method is thread-safe."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self._mailboxes: dict[str, Mailbox] = {}
        self._items: dict[str, Item] = {}
        self._attachments: dict[str, Item] = {}  # attachment id -> the filed item holding it
        self._immutable: dict[str, Item] = {}  # Graph immutable id -> the filed item
        # An id an item had before it moved or was deleted -> that item (its new folder, or
        # None): Graph's delta tells "moved away" from "deleted" and names it by immutable id.
        self._former: dict[str, Item] = {}
        self._serial = 0

    # --- mailboxes and folders -----------------------------------------------------------------

    def next_serial(self) -> int:
        with self.lock:
            self._serial += 1
            return self._serial

    def reset(self) -> None:
        """Forget every mailbox and item (ids and sync states from before never match again)."""
        with self.lock:
            self._mailboxes.clear()
            self._items.clear()
            self._attachments.clear()
            self._immutable.clear()
            self._former.clear()
            self.changed.notify_all()

    def add_mailbox(self, address: str, display_name: str | None = None) -> Mailbox:
        """Create a mailbox with the distinguished folders (idempotent)."""
        key = address.lower()
        with self.lock:
            if key in self._mailboxes:
                return self._mailboxes[key]
            mailbox = Mailbox(
                address=address,
                display_name=display_name or address.split("@", maxsplit=1)[0],
                number=len(self._mailboxes) + 1,
            )
            for distinguished, name, parent, folder_class in DISTINGUISHED_FOLDERS:
                self._new_folder(
                    mailbox,
                    name,
                    mailbox.distinguished[parent] if parent else None,
                    distinguished=distinguished,
                    folder_class=folder_class,
                )
            self._mailboxes[key] = mailbox
            return mailbox

    def mailbox(self, address: str) -> Mailbox | None:
        with self.lock:
            return self._mailboxes.get(address.lower())

    def mailboxes(self) -> list[Mailbox]:
        with self.lock:
            return list(self._mailboxes.values())

    def _new_folder(
        self,
        mailbox: Mailbox,
        name: str,
        parent: Folder | None,
        *,
        distinguished: str | None = None,
        folder_class: str = "IPF.Note",
    ) -> Folder:
        serial = self.next_serial()
        folder = Folder(
            serial=serial,
            folder_id=new_id(b"F", serial),
            name=name,
            mailbox=mailbox,
            parent=parent,
            distinguished=distinguished,
            folder_class=folder_class,
        )
        mailbox.folders[folder.folder_id] = folder
        if distinguished:
            mailbox.distinguished[distinguished] = folder
        if parent is not None:
            parent.children.append(folder)
            parent.version += 1
        return folder

    def create_folder(
        self, mailbox: Mailbox, parent: Folder, name: str, folder_class: str = "IPF.Note"
    ) -> Folder:
        """A new user folder; ``ErrorFolderExists`` when the parent has one of that name."""
        with self.lock:
            if any(child.name.lower() == name.lower() for child in parent.children):
                raise StoreError(
                    "ErrorFolderExists", "A folder with the specified name already exists."
                )
            folder = self._new_folder(mailbox, name, parent, folder_class=folder_class)
            self._log_folder(parent)  # one more child folder
            self._log_folder(folder)
            self._event(mailbox, "Created", None, folder.folder_id, is_folder=True)
            return folder

    def delete_folder(self, folder: Folder) -> None:
        """Remove a user folder with its subfolders and their items for good (DeleteFolder
        HardDelete); ``ErrorDeleteDistinguishedFolder`` for a distinguished folder."""
        with self.lock:
            if folder.distinguished is not None:
                raise StoreError(
                    "ErrorDeleteDistinguishedFolder", "Distinguished folders cannot be deleted."
                )
            mailbox = folder.mailbox
            stack = [folder]
            while stack:
                current = stack.pop()
                stack.extend(current.children)
                for item in list(current.items.values()):
                    self.delete(item)
                del mailbox.folders[current.folder_id]
                mailbox.folder_csns.pop(current.folder_id, None)
                mailbox.csn += 1
                mailbox.removed_folders[current.folder_id] = mailbox.csn
            if folder.parent is not None:
                folder.parent.children.remove(folder)
                folder.parent.version += 1
                self._log_folder(folder.parent)  # one child folder fewer
            self._event(mailbox, "Deleted", None, folder.folder_id, is_folder=True)

    def folder(self, mailbox: Mailbox, folder_id: str) -> Folder | None:
        """A folder by id or distinguished id."""
        with self.lock:
            return mailbox.folders.get(folder_id) or mailbox.distinguished.get(folder_id)

    def folder_by_path(self, mailbox: Mailbox, path: str, *, create: bool = False) -> Folder:
        """Resolve ``inbox/Processed`` or ``Inbox/Processed`` (first segment: distinguished id or
        a folder under the message root); ``create`` makes the missing user folders."""
        with self.lock:
            parts = [p for p in path.strip("/").split("/") if p]
            if not parts:
                return mailbox.distinguished["msgfolderroot"]
            current = mailbox.distinguished.get(parts[0].lower())
            rest = parts[1:]
            if current is None:
                current = mailbox.distinguished["msgfolderroot"]
                rest = parts
            for name in rest:
                found = next((c for c in current.children if c.name.lower() == name.lower()), None)
                if found is None:
                    if not create:
                        raise StoreError("ErrorFolderNotFound", f"no folder {path!r}")
                    found = self.create_folder(mailbox, current, name)
                current = found
            return current

    # --- items ---------------------------------------------------------------------------------

    def new_attachment_id(self) -> str:
        return new_id(b"A", self.next_serial())

    def item(self, mailbox: Mailbox, item_id: str) -> Item | None:
        """An item of ``mailbox`` by id (None when unknown, moved away or deleted)."""
        with self.lock:
            item = self._items.get(item_id)
            if item is None or item.folder is None or item.folder.mailbox is not mailbox:
                return None
            return item

    def item_by_immutable_id(self, mailbox: Mailbox, immutable_id: str) -> Item | None:
        """An item of ``mailbox`` by its Graph immutable id (None when unknown or deleted)."""
        with self.lock:
            item = self._immutable.get(immutable_id)
            if item is None or item.folder is None or item.folder.mailbox is not mailbox:
                return None
            return item

    def former(self, mailbox: Mailbox, item_id: str) -> Item | None:
        """The item ``item_id`` named before a move or a delete (``folder`` None: deleted)."""
        with self.lock:
            item = self._former.get(item_id)
            if item is None or (item.folder is not None and item.folder.mailbox is not mailbox):
                return None
            return item

    def attachment(self, mailbox: Mailbox, attachment_id: str) -> Attachment | None:
        """An attachment (at any depth) of a filed item of ``mailbox``."""
        with self.lock:
            item = self._attachments.get(attachment_id)
            if item is None or item.folder is None or item.folder.mailbox is not mailbox:
                return None
            return _find_attachment(item, attachment_id)

    def _index_attachments(self, owner: Item, item: Item) -> None:
        for attachment in item.attachments:
            self._attachments[attachment.attachment_id] = owner
            if attachment.item is not None:
                self._index_attachments(owner, attachment.item)

    def _unindex_attachments(self, item: Item) -> None:
        for attachment in item.attachments:
            self._attachments.pop(attachment.attachment_id, None)
            if attachment.item is not None:
                self._unindex_attachments(attachment.item)

    def parse(
        self,
        raw: bytes,
        *,
        item_class: str = "IPM.Note",
        received_at: datetime | None = None,
    ) -> Item:
        """An unfiled item from MIME bytes; ``file`` puts it in a folder."""
        serial = self.next_serial()
        return parse_mime(
            raw,
            serial=serial,
            item_id=new_id(b"I", serial),
            attachment_id=self.new_attachment_id,
            item_class=item_class,
            received_at=received_at,
        )

    def new_item(self, **fields: object) -> Item:
        """An unfiled item built from fields (CreateItem without MimeContent)."""
        serial = self.next_serial()
        now = _now()
        item = Item(serial=serial, item_id=new_id(b"I", serial), folder=None)
        item.created_at = item.modified_at = item.received_at = now
        for name, value in fields.items():
            setattr(item, name, value)
        return item

    def file(self, folder: Folder, item: Item, *, new_mail: bool = True) -> Item:
        """Put an unfiled item into ``folder`` and log it (NewMail + Created events)."""
        with self.lock:
            item.folder = folder
            folder.items[item.item_id] = item
            self._items[item.item_id] = item
            self._immutable[item.immutable_id] = item
            self._index_attachments(item, item)
            self._log(folder, item.item_id, "add")
            if new_mail:
                self._event(folder.mailbox, "NewMail", item.item_id, folder.folder_id)
            self._event(folder.mailbox, "Created", item.item_id, folder.folder_id)
            return item

    def update(
        self, item: Item, change: Callable[[Item], None], *, read_only: bool = False
    ) -> None:
        """Apply ``change`` under the lock, bump the change key and log it.

        ``read_only``: only the read flag changed (SyncFolderItems reports ReadFlagChange).
        """
        with self.lock:
            change(item)
            item.version += 1
            item.modified_at = _now()
            assert item.folder is not None
            self._log(item.folder, item.item_id, "read" if read_only else "update")
            self._event(item.folder.mailbox, "Modified", item.item_id, item.folder.folder_id)

    def move(self, item: Item, destination: Folder, *, kind: str = "Moved") -> Item:
        """Move ``item``: it gets a new id in ``destination`` (as in Exchange)."""
        with self.lock:
            source = item.folder
            assert source is not None
            self._unfile(item)
            serial = self.next_serial()
            item.serial = serial
            old_id, item.item_id = item.item_id, new_id(b"I", serial)
            item.version = 0
            item.folder = destination
            destination.items[item.item_id] = item
            self._items[item.item_id] = item
            self._immutable[item.immutable_id] = item
            self._log(destination, item.item_id, "add")
            self._event(
                destination.mailbox,
                kind,
                item.item_id,
                destination.folder_id,
                old_item_id=old_id,
                old_folder_id=source.folder_id,
            )
            return item

    def copy(self, item: Item, destination: Folder) -> Item:
        """A copy of ``item`` with a new id in ``destination``."""
        with self.lock:
            serial = self.next_serial()
            clone = Item(
                **{
                    **vars(item),
                    "serial": serial,
                    "item_id": new_id(b"I", serial),
                    "immutable_id": new_immutable_id(),
                }
            )
            clone.categories = list(item.categories)
            clone.flag = Flag(**vars(item.flag))
            clone.attachments = [
                Attachment(**{**vars(a), "attachment_id": self.new_attachment_id()})
                for a in item.attachments
            ]
            clone.version = 0
            clone.folder = destination
            destination.items[clone.item_id] = clone
            self._items[clone.item_id] = clone
            self._immutable[clone.immutable_id] = clone
            self._index_attachments(clone, clone)
            self._log(destination, clone.item_id, "add")
            assert item.folder is not None
            self._event(
                destination.mailbox,
                "Copied",
                clone.item_id,
                destination.folder_id,
                old_item_id=item.item_id,
                old_folder_id=item.folder.folder_id,
            )
            return clone

    def delete(self, item: Item) -> None:
        """Remove ``item`` for good (HardDelete)."""
        with self.lock:
            folder = item.folder
            assert folder is not None
            self._unfile(item)
            self._unindex_attachments(item)
            self._event(folder.mailbox, "Deleted", item.item_id, folder.folder_id)

    def _unfile(self, item: Item) -> None:
        folder = item.folder
        assert folder is not None
        del folder.items[item.item_id]
        self._items.pop(item.item_id, None)
        self._former[item.item_id] = item
        # A move files the item again under the same immutable id (MailStore.move).
        self._immutable.pop(item.immutable_id, None)
        self._log(folder, item.item_id, "remove")
        item.folder = None

    def views(self, folder: Folder) -> list[ItemView]:
        """Snapshots of the items of ``folder``, oldest first."""
        with self.lock:
            return [
                ItemView(
                    item_id=i.item_id,
                    change_key=i.change_key,
                    subject=i.subject,
                    is_read=i.is_read,
                    categories=tuple(i.categories),
                    folder=folder.path,
                    internet_message_id=i.internet_message_id,
                    item_class=i.item_class,
                )
                for i in folder.items.values()
            ]

    # --- sync and events -----------------------------------------------------------------------

    def _log(self, folder: Folder, item_id: str, op: str) -> None:
        mailbox = folder.mailbox
        mailbox.csn += 1
        folder.log.append((mailbox.csn, item_id, op))
        folder.log_csns.append(mailbox.csn)
        folder.item_log.setdefault(item_id, []).append((mailbox.csn, op))
        folder.version += 1

    def _log_folder(self, folder: Folder) -> None:
        """A change of the folder itself, for Graph's mailFolders/delta (``folder_csns``)."""
        mailbox = folder.mailbox
        mailbox.csn += 1
        mailbox.folder_csns[folder.folder_id] = mailbox.csn

    def sync(
        self,
        folder: Folder,
        since: int,
        max_changes: int,
        ignore: Iterable[str] = (),
    ) -> tuple[list[SyncChange], int, bool]:
        """Changes in ``folder`` after CSN ``since``: (changes, new CSN, includes last).

        Each item changed after ``since`` is reported once with its net effect (created and
        deleted in between: nothing). Items are taken in the order of their first change after
        ``since``; when ``max_changes`` stops the page, the new CSN is just before the first
        change of the first item not reported, so nothing is skipped (an item reported in this
        page may be reported again next page as an Update, which clients handle).
        """
        ignored = set(ignore)
        with self.lock:
            start = bisect.bisect_right(folder.log_csns, since)
            seen: set[str] = set()
            changes: list[SyncChange] = []
            # Walk the log from the position; each item is judged once, on its first entry after
            # the position, from its own entries (item_log), so a page costs O(page), not O(log).
            for index in range(start, len(folder.log)):
                csn, item_id, _ = folder.log[index]
                if item_id in seen:
                    continue
                seen.add(item_id)
                entries = folder.item_log[item_id]
                after = entries[bisect.bisect_right(entries, since, key=_csn) :]
                change = self._net_change(folder, item_id, after)
                if change is None or item_id in ignored:
                    continue
                if len(changes) == max_changes:
                    return changes, csn - 1, False
                changes.append(change)
            return changes, folder.mailbox.csn, True

    @staticmethod
    def _net_change(
        folder: Folder, item_id: str, entries: list[tuple[int, str]]
    ) -> SyncChange | None:
        existed = entries[0][1] != "add"
        item = folder.items.get(item_id)
        if item is None:
            return SyncChange("Delete", item_id) if existed else None
        if not existed:
            return SyncChange("Create", item_id, item)
        if all(op == "read" for _, op in entries):
            return SyncChange("ReadFlagChange", item_id, item, is_read=item.is_read)
        return SyncChange("Update", item_id, item)

    def _event(
        self,
        mailbox: Mailbox,
        kind: str,
        item_id: str | None,
        folder_id: str | None,
        *,
        old_item_id: str | None = None,
        old_folder_id: str | None = None,
        is_folder: bool = False,
    ) -> None:
        event = Event(
            seq=len(mailbox.events) + 1,
            kind=kind,
            timestamp=_now(),
            item_id=item_id,
            folder_id=folder_id,
            old_item_id=old_item_id,
            old_folder_id=old_folder_id,
            is_folder=is_folder,
        )
        mailbox.events.append(event)
        self.changed.notify_all()

    def events_since(self, mailbox: Mailbox, seq: int) -> list[Event]:
        """The events of ``mailbox`` after sequence number ``seq`` (0: all)."""
        with self.lock:
            return mailbox.events[seq:]

    def last_event_seq(self, mailbox: Mailbox) -> int:
        with self.lock:
            return len(mailbox.events)

    def wait_events(self, mailbox: Mailbox, seq: int, timeout: float) -> list[Event]:
        """Block until ``mailbox`` has events after ``seq`` or ``timeout`` passes; returns them."""
        with self.changed:
            self.changed.wait_for(lambda: len(mailbox.events) > seq, timeout=timeout)
            return mailbox.events[seq:]


def _find_attachment(item: Item, attachment_id: str) -> Attachment | None:
    for attachment in item.attachments:
        if attachment.attachment_id == attachment_id:
            return attachment
        if attachment.item is not None:
            found = _find_attachment(attachment.item, attachment_id)
            if found is not None:
                return found
    return None


def _csn(entry: tuple[int, str]) -> int:
    return entry[0]
