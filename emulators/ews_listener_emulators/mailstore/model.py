"""The emulator's mail records: mailboxes, folders, items, attachments and change events.

Ids are opaque base64 like Exchange's, and carry nothing a client could use; the store maps them
back with dictionaries. Change keys encode the item's version, so they change on every update.
"""

from __future__ import annotations

import base64
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

__all__ = [
    "DISTINGUISHED_FOLDERS",
    "Address",
    "Attachment",
    "Event",
    "Flag",
    "Folder",
    "Item",
    "ItemView",
    "Mailbox",
    "StoreError",
    "SyncChange",
    "item_element",
    "new_id",
    "new_immutable_id",
    "well_formed_id",
    "well_formed_immutable_id",
]


_ID_PREFIX = b"\x00\x00EMU"
_ID_LENGTH = len(_ID_PREFIX) + 1 + 8 + 12


def new_id(kind: bytes, serial: int) -> str:
    """An opaque, unique EWS-looking id (base64 of a kind tag, a serial and 12 random bytes)."""
    raw = _ID_PREFIX + kind + struct.pack(">Q", serial) + os.urandom(12)
    return base64.b64encode(raw).decode()


def new_immutable_id() -> str:
    """A Graph immutable id: URL-safe base64 like Exchange's, unique, never reused."""
    return base64.urlsafe_b64encode(_ID_PREFIX + b"M" + os.urandom(20)).decode()


def well_formed_id(value: str, kind: bytes) -> bool:
    """Whether ``value`` has the shape of an id this emulator issues for ``kind``.

    Exchange tells a malformed id (``ErrorInvalidIdMalformed``) from a well-formed one that
    names nothing (``ErrorItemNotFound``); so do we, whatever run issued the id.
    """
    try:
        raw = base64.b64decode(value, validate=True)
    except ValueError:
        return False
    return len(raw) == _ID_LENGTH and raw.startswith(_ID_PREFIX) and raw[5:6] == kind


def well_formed_immutable_id(value: str) -> bool:
    """Whether ``value`` has the shape of a Graph immutable id this emulator issues."""
    try:
        raw = base64.urlsafe_b64decode(value.encode("ascii"))
    except ValueError:
        return False
    return len(raw) == len(_ID_PREFIX) + 1 + 20 and raw.startswith(_ID_PREFIX + b"M")


def change_key(serial: int, version: int) -> str:
    """A change key for (record, version): a new one on every update."""
    return base64.b64encode(b"CQAAABYA" + struct.pack(">QI", serial, version)).decode()


@dataclass(frozen=True)
class Address:
    """A mailbox address with its display name."""

    email: str
    name: str = ""


@dataclass
class Flag:
    """The follow-up flag of an item (``t:Flag``)."""

    status: str = "NotFlagged"  # NotFlagged | Flagged | Complete
    start: datetime | None = None
    due: datetime | None = None
    complete: datetime | None = None


@dataclass
class Attachment:
    """A file attachment (``content``), an item attachment (``item``) or a reference attachment
    (``source_url``: a link to a file in OneDrive or SharePoint, Graph's referenceAttachment)."""

    attachment_id: str
    name: str
    content_type: str
    content: bytes | None = None
    item: Item | None = None
    content_id: str | None = None
    is_inline: bool = False
    last_modified: datetime | None = None
    source_url: str | None = None
    provider: str | None = None  # oneDriveBusiness, oneDriveConsumer, dropbox, other

    @property
    def size(self) -> int:
        if self.content is not None:
            return len(self.content)
        if self.source_url is not None:
            return len(self.source_url.encode())  # the link is all the message holds
        return self.item.size if self.item is not None else 0


@dataclass
class Item:
    """One item in a folder; an item attachment's embedded item has ``folder`` None."""

    serial: int
    item_id: str
    folder: Folder | None
    item_class: str = "IPM.Note"
    subject: str = ""
    text_body: str | None = None
    html_body: str | None = None
    mime: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    sender: Address | None = None
    from_: Address | None = None
    to: list[Address] = field(default_factory=list)
    cc: list[Address] = field(default_factory=list)
    bcc: list[Address] = field(default_factory=list)
    reply_to: list[Address] = field(default_factory=list)
    internet_message_id: str | None = None
    in_reply_to: str | None = None
    references: str | None = None
    conversation_topic: str | None = None
    sent_at: datetime | None = None
    received_at: datetime | None = None
    created_at: datetime | None = None
    modified_at: datetime | None = None
    is_read: bool = False
    is_draft: bool = False
    importance: str = "Normal"
    sensitivity: str = "Normal"
    categories: list[str] = field(default_factory=list)
    flag: Flag = field(default_factory=Flag)
    attachments: list[Attachment] = field(default_factory=list)
    read_receipt_requested: bool = False
    delivery_receipt_requested: bool = False
    version: int = 0
    # Graph's inferenceClassification (the Focused Inbox): "focused" or "other".
    inference_classification: str = "focused"
    # Graph's ImmutableId (Prefer: IdType="ImmutableId"): kept by moves, new for a copy.
    immutable_id: str = field(default_factory=new_immutable_id)

    @property
    def change_key(self) -> str:
        return change_key(self.serial, self.version)

    @property
    def size(self) -> int:
        return len(self.mime) or len(self.text_body or "") + len(self.html_body or "")

    @property
    def has_attachments(self) -> bool:
        # Exchange reports HasAttachments false for inline-only images (signatures, logos).
        return any(not a.is_inline for a in self.attachments)

    @property
    def element(self) -> str:
        return item_element(self.item_class)


def item_element(item_class: str) -> str:
    """The ``t:`` element an item of this class is returned as (per types.xsd ``ItemType``)."""
    lowered = item_class.lower()
    if lowered.startswith("ipm.schedule.meeting.request"):
        return "MeetingRequest"
    if lowered.startswith("ipm.schedule.meeting.canceled"):
        return "MeetingCancellation"
    if lowered.startswith("ipm.schedule.meeting.resp"):
        return "MeetingResponse"
    # IPM.Note*, REPORT.IPM.Note.NDR / .IPNRN (read receipts), IPM.Post.* … come back as messages.
    return "Message"


@dataclass
class Folder:
    """A mail folder; ``log`` is its change log for SyncFolderItems (see ``MailStore.sync``)."""

    serial: int
    folder_id: str
    name: str
    mailbox: Mailbox
    parent: Folder | None = None
    distinguished: str | None = None
    folder_class: str = "IPF.Note"
    children: list[Folder] = field(default_factory=list)
    items: dict[str, Item] = field(default_factory=dict)
    version: int = 0
    # (change sequence number, item id, op) with op in add | remove | update | read; csn ascending.
    log: list[tuple[int, str, str]] = field(default_factory=list)
    log_csns: list[int] = field(default_factory=list)
    # The same entries per item id, so a sync page looks only at the items it reports.
    item_log: dict[str, list[tuple[int, str]]] = field(default_factory=dict)

    @property
    def change_key(self) -> str:
        return change_key(self.serial, self.version)

    @property
    def path(self) -> str:
        """Display-name path below the message folder root, e.g. ``Inbox/Processed``."""
        parts: list[str] = []
        folder: Folder | None = self
        while folder is not None and folder.distinguished not in ("msgfolderroot", "root"):
            parts.append(folder.name)
            folder = folder.parent
        return "/".join(reversed(parts))

    @property
    def unread_count(self) -> int:
        return sum(1 for item in self.items.values() if not item.is_read)


@dataclass(frozen=True)
class Event:
    """One entry of a mailbox's append-only event log (what Subscribe/GetEvents report)."""

    seq: int
    kind: str  # NewMail | Created | Modified | Moved | Copied | Deleted
    timestamp: datetime
    item_id: str | None
    folder_id: str | None
    old_item_id: str | None = None
    old_folder_id: str | None = None
    is_folder: bool = False

    @property
    def watermark(self) -> str:
        """An opaque watermark that sorts with ``seq``."""
        return base64.b64encode(b"WM" + struct.pack(">Q", self.seq)).decode()


@dataclass
class Mailbox:
    """One mailbox: its folders by id, distinguished folders, change sequence and event log."""

    address: str
    display_name: str
    number: int
    folders: dict[str, Folder] = field(default_factory=dict)
    distinguished: dict[str, Folder] = field(default_factory=dict)
    csn: int = 0
    events: list[Event] = field(default_factory=list)
    # Graph's mailFolders/delta (graph/folder_delta.py): folder id -> the CSN of the folder's last
    # change of its own (created, a child folder added or removed), and the ids of deleted folders
    # -> the CSN of the delete. Item changes are in each folder's ``log``.
    folder_csns: dict[str, int] = field(default_factory=dict)
    removed_folders: dict[str, int] = field(default_factory=dict)


#: (distinguished id, display name, parent distinguished id, folder class)
DISTINGUISHED_FOLDERS: tuple[tuple[str, str, str | None, str], ...] = (
    ("root", "Root", None, "IPF"),
    ("msgfolderroot", "Top of Information Store", "root", "IPF.Note"),
    ("inbox", "Inbox", "msgfolderroot", "IPF.Note"),
    ("deleteditems", "Deleted Items", "msgfolderroot", "IPF.Note"),
    ("sentitems", "Sent Items", "msgfolderroot", "IPF.Note"),
    ("drafts", "Drafts", "msgfolderroot", "IPF.Note"),
    ("outbox", "Outbox", "msgfolderroot", "IPF.Note"),
    ("junkemail", "Junk Email", "msgfolderroot", "IPF.Note"),
    ("archivemsgfolderroot", "Archive", "msgfolderroot", "IPF.Note"),
    ("calendar", "Calendar", "msgfolderroot", "IPF.Appointment"),
    ("contacts", "Contacts", "msgfolderroot", "IPF.Contact"),
    ("tasks", "Tasks", "msgfolderroot", "IPF.Task"),
    ("notes", "Notes", "msgfolderroot", "IPF.StickyNote"),
    ("journal", "Journal", "msgfolderroot", "IPF.Journal"),
    ("conversationhistory", "Conversation History", "msgfolderroot", "IPF.Note"),
    ("recoverableitemsroot", "Recoverable Items", "root", "IPF"),
    ("recoverableitemsdeletions", "Deletions", "recoverableitemsroot", "IPF"),
    ("recoverableitemspurges", "Purges", "recoverableitemsroot", "IPF"),
)


class StoreError(Exception):
    """A store operation cannot be done; ``code`` is the EWS response code to answer with."""

    def __init__(self, code: str, message: str, values: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.code = code
        #: ``t:Value`` entries for ``m:MessageXml`` (``SmtpAddress`` of ErrorNonExistentMailbox).
        self.values: Mapping[str, str] = dict(values or {})


@dataclass(frozen=True)
class ItemView:
    """A snapshot of one item for tests and the admin API."""

    item_id: str
    change_key: str
    subject: str
    is_read: bool
    categories: tuple[str, ...]
    folder: str
    internet_message_id: str | None
    item_class: str


@dataclass(frozen=True)
class SyncChange:
    """One SyncFolderItems change: ``kind`` Create | Update | Delete | ReadFlagChange."""

    kind: str
    item_id: str
    item: Item | None = None
    is_read: bool = False
