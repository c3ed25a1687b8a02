"""Items, folders and attachments as EWS XML, in ``types.xsd`` element order.

Which properties an item carries follows the request's ``ItemShape``: ``IdOnly``, ``Default`` or
``AllProperties`` plus ``AdditionalProperties`` (``t:FieldURI``); ``MimeContent`` only when asked
(``IncludeMimeContent`` or the field), as Exchange does. Unknown field URIs are left out, which
exchangelib reads as "no value".
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from lxml import etree

from ews_listener_emulators.soap import sub, t
from ews_listener_emulators.store import Address, Attachment, Folder, Item, Mailbox

__all__ = [
    "ItemShape",
    "attachment_element",
    "folder_element",
    "format_datetime",
    "item_element",
    "parse_shape",
]

ID_ONLY = frozenset({"item:ItemId"})
DEFAULT = frozenset(
    {
        "item:ItemId",
        "item:ParentFolderId",
        "item:ItemClass",
        "item:Subject",
        "item:Sensitivity",
        "item:Attachments",
        "item:DateTimeReceived",
        "item:Size",
        "item:Importance",
        "item:IsDraft",
        "item:DateTimeSent",
        "item:DateTimeCreated",
        "item:DisplayCc",
        "item:DisplayTo",
        "item:HasAttachments",
        "message:From",
        "message:IsRead",
        "message:ConversationTopic",
        "message:InternetMessageId",
    }
)


def format_datetime(value: datetime) -> str:
    """EWS ``xs:dateTime`` in UTC with a ``Z``."""
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def _bool(value: bool) -> str:
    return "true" if value else "false"


@dataclass(frozen=True)
class ItemShape:
    """What to render for each item."""

    fields: frozenset[str]
    all_properties: bool = False
    body_type: str = "Best"  # Best | HTML | Text
    include_mime: bool = False

    def wants(self, uri: str) -> bool:
        if uri == "item:MimeContent":
            return self.include_mime or uri in self.fields
        return self.all_properties or uri in self.fields


def parse_shape(shape: etree._Element | None) -> ItemShape:
    """Read ``m:ItemShape`` (or ``m:ItemShape``-like) into an ``ItemShape``."""
    if shape is None:
        return ItemShape(fields=ID_ONLY)
    base = (shape.findtext(t("BaseShape")) or "IdOnly").strip()
    fields = set(ID_ONLY if base == "IdOnly" else DEFAULT)
    extra = shape.find(t("AdditionalProperties"))
    if extra is not None:
        for element in extra:
            uri = element.get("FieldURI")
            if uri:
                fields.add(uri)
    return ItemShape(
        fields=frozenset(fields),
        all_properties=base == "AllProperties",
        body_type=(shape.findtext(t("BodyType")) or "Best").strip(),
        include_mime=(shape.findtext(t("IncludeMimeContent")) or "").strip() in ("true", "1"),
    )


def _mailbox(parent: etree._Element, tag: str, address: Address) -> None:
    mailbox = sub(parent, t(tag))
    if address.name:
        sub(mailbox, t("Name"), address.name)
    if address.email:  # ``MAILER DAEMON <>`` has a name and no address (mailstore/mime.py)
        sub(mailbox, t("EmailAddress"), address.email)
        sub(mailbox, t("RoutingType"), "SMTP")
    sub(mailbox, t("MailboxType"), "OneOff")


def _single(parent: etree._Element, tag: str, address: Address | None) -> None:
    if address is not None:
        _mailbox(sub(parent, t(tag)), "Mailbox", address)


def _many(parent: etree._Element, tag: str, addresses: list[Address]) -> None:
    if addresses:
        container = sub(parent, t(tag))
        for address in addresses:
            _mailbox(container, "Mailbox", address)


def _display(addresses: list[Address]) -> str:
    return "; ".join(a.name or a.email for a in addresses)


def _body(parent: etree._Element, item: Item, body_type: str, tag: str = "Body") -> None:
    if body_type in ("HTML", "Best") and item.html_body is not None:
        sub(parent, t(tag), item.html_body, {"BodyType": "HTML"})
    elif item.text_body is not None:
        sub(parent, t(tag), item.text_body, {"BodyType": "Text"})
    elif item.html_body is not None:
        sub(parent, t(tag), item.html_body, {"BodyType": "HTML"})
    else:
        sub(parent, t(tag), "", {"BodyType": "Text"})


def attachment_element(
    attachment: Attachment, *, content: bool, owner: Mailbox | None = None
) -> etree._Element:
    """``t:FileAttachment`` / ``t:ItemAttachment``; ``content`` adds the bytes or the item."""
    is_file = attachment.item is None
    element = etree.Element(t("FileAttachment" if is_file else "ItemAttachment"))
    sub(element, t("AttachmentId"), attrib={"Id": attachment.attachment_id})
    sub(element, t("Name"), attachment.name)
    sub(element, t("ContentType"), attachment.content_type)
    if attachment.content_id:
        sub(element, t("ContentId"), attachment.content_id)
    sub(element, t("Size"), str(attachment.size))
    if attachment.last_modified is not None:
        sub(element, t("LastModifiedTime"), format_datetime(attachment.last_modified))
    sub(element, t("IsInline"), _bool(attachment.is_inline))
    if is_file:
        sub(element, t("IsContactPhoto"), "false")
        if content:
            data = attachment.content or b""
            sub(element, t("Content"), base64.b64encode(data).decode("ascii"))
    elif content and attachment.item is not None:
        shape = ItemShape(fields=DEFAULT, all_properties=True, include_mime=True)
        element.append(item_element(attachment.item, shape, owner=owner, embedded=True))
    return element


def _attachments(parent: etree._Element, item: Item) -> None:
    if item.attachments:
        container = sub(parent, t("Attachments"))
        for attachment in item.attachments:
            container.append(attachment_element(attachment, content=False))


def _flag(parent: etree._Element, item: Item) -> None:
    flag = sub(parent, t("Flag"))
    sub(flag, t("FlagStatus"), item.flag.status)
    for tag, value in (
        ("StartDate", item.flag.start),
        ("DueDate", item.flag.due),
        ("CompleteDate", item.flag.complete),
    ):
        if value is not None:
            sub(flag, t(tag), format_datetime(value))


def _headers(parent: etree._Element, item: Item) -> None:
    if item.headers:
        container = sub(parent, t("InternetMessageHeaders"))
        for name, value in item.headers:
            sub(container, t("InternetMessageHeader"), value, {"HeaderName": name})


_Writer = Callable[[etree._Element, Item, ItemShape, Mailbox | None], None]


def _text(tag: str, get: Callable[[Item], str | None]) -> _Writer:
    def write(parent: etree._Element, item: Item, shape: ItemShape, owner: Mailbox | None) -> None:
        value = get(item)
        if value is not None:
            sub(parent, t(tag), value)

    return write


def _when(tag: str, get: Callable[[Item], datetime | None]) -> _Writer:
    return _text(tag, lambda item: format_datetime(v) if (v := get(item)) is not None else None)


def _flagged(tag: str, get: Callable[[Item], bool]) -> _Writer:
    return _text(tag, lambda item: _bool(get(item)))


def _write_mime(parent: etree._Element, item: Item, shape: ItemShape, owner: object) -> None:
    encoded = base64.b64encode(item.mime).decode("ascii")
    sub(parent, t("MimeContent"), encoded, {"CharacterSet": "UTF-8"})


def _write_id(parent: etree._Element, item: Item, shape: ItemShape, owner: object) -> None:
    if item.item_id:
        sub(parent, t("ItemId"), attrib={"Id": item.item_id, "ChangeKey": item.change_key})


def _write_parent(parent: etree._Element, item: Item, shape: ItemShape, owner: object) -> None:
    if item.folder is not None:
        attrib = {"Id": item.folder.folder_id, "ChangeKey": item.folder.change_key}
        sub(parent, t("ParentFolderId"), attrib=attrib)


def _write_categories(parent: etree._Element, item: Item, shape: ItemShape, owner: object) -> None:
    if item.categories:
        container = sub(parent, t("Categories"))
        for category in item.categories:
            sub(container, t("String"), category)


def _write_received_by(
    parent: etree._Element, item: Item, shape: ItemShape, owner: Mailbox | None
) -> None:
    if owner is not None:
        _single(parent, "ReceivedBy", Address(owner.address, owner.display_name))


# (field URI, writer) in the order of ItemType then MessageType in types.xsd.
_FIELDS: tuple[tuple[str, _Writer], ...] = (
    ("item:MimeContent", _write_mime),
    ("item:ItemId", _write_id),
    ("item:ParentFolderId", _write_parent),
    ("item:ItemClass", _text("ItemClass", lambda i: i.item_class)),
    ("item:Subject", _text("Subject", lambda i: i.subject)),
    ("item:Sensitivity", _text("Sensitivity", lambda i: i.sensitivity)),
    ("item:Body", lambda p, i, s, o: _body(p, i, s.body_type)),
    ("item:Attachments", lambda p, i, s, o: _attachments(p, i)),
    ("item:DateTimeReceived", _when("DateTimeReceived", lambda i: i.received_at)),
    ("item:Size", _text("Size", lambda i: str(i.size))),
    ("item:Categories", _write_categories),
    ("item:Importance", _text("Importance", lambda i: i.importance)),
    ("item:InReplyTo", _text("InReplyTo", lambda i: i.in_reply_to)),
    ("item:IsSubmitted", _flagged("IsSubmitted", lambda i: False)),
    ("item:IsDraft", _flagged("IsDraft", lambda i: i.is_draft)),
    ("item:IsFromMe", _flagged("IsFromMe", lambda i: False)),
    ("item:IsResend", _flagged("IsResend", lambda i: False)),
    ("item:IsUnmodified", _flagged("IsUnmodified", lambda i: i.version == 0)),
    ("item:InternetMessageHeaders", lambda p, i, s, o: _headers(p, i)),
    ("item:DateTimeSent", _when("DateTimeSent", lambda i: i.sent_at)),
    ("item:DateTimeCreated", _when("DateTimeCreated", lambda i: i.created_at)),
    ("item:ReminderIsSet", _flagged("ReminderIsSet", lambda i: False)),
    ("item:DisplayCc", _text("DisplayCc", lambda i: _display(i.cc))),
    ("item:DisplayTo", _text("DisplayTo", lambda i: _display(i.to))),
    ("item:HasAttachments", _flagged("HasAttachments", lambda i: i.has_attachments)),
    ("item:Culture", _text("Culture", lambda i: "en-US")),
    ("item:LastModifiedTime", _when("LastModifiedTime", lambda i: i.modified_at)),
    ("item:IsAssociated", _flagged("IsAssociated", lambda i: False)),
    ("item:Flag", lambda p, i, s, o: _flag(p, i)),
    ("item:TextBody", lambda p, i, s, o: _body(p, i, "Text", "TextBody")),
    ("message:Sender", lambda p, i, s, o: _single(p, "Sender", i.sender)),
    ("message:ToRecipients", lambda p, i, s, o: _many(p, "ToRecipients", i.to)),
    ("message:CcRecipients", lambda p, i, s, o: _many(p, "CcRecipients", i.cc)),
    ("message:BccRecipients", lambda p, i, s, o: _many(p, "BccRecipients", i.bcc)),
    (
        "message:IsReadReceiptRequested",
        _flagged("IsReadReceiptRequested", lambda i: i.read_receipt_requested),
    ),
    (
        "message:IsDeliveryReceiptRequested",
        _flagged("IsDeliveryReceiptRequested", lambda i: i.delivery_receipt_requested),
    ),
    ("message:ConversationTopic", _text("ConversationTopic", lambda i: i.conversation_topic)),
    ("message:From", lambda p, i, s, o: _single(p, "From", i.from_)),
    ("message:InternetMessageId", _text("InternetMessageId", lambda i: i.internet_message_id)),
    ("message:IsRead", _flagged("IsRead", lambda i: i.is_read)),
    ("message:References", _text("References", lambda i: i.references)),
    ("message:ReplyTo", lambda p, i, s, o: _many(p, "ReplyTo", i.reply_to)),
    ("message:ReceivedBy", _write_received_by),
)


def item_element(
    item: Item, shape: ItemShape, *, owner: Mailbox | None = None, embedded: bool = False
) -> etree._Element:
    """``t:Message`` (or the element of its item class) with the fields ``shape`` asks for."""
    element = etree.Element(t(item.element))
    for uri, write in _FIELDS:
        if shape.wants(uri) and not (embedded and uri in ("item:ItemId", "item:ParentFolderId")):
            write(element, item, shape, owner)
    return element


def folder_element(folder: Folder, *, full: bool = True) -> etree._Element:
    """``t:Folder`` with id, parent, class, name, counts (schema order of ``FolderType``)."""
    element = etree.Element(t("Folder"))
    sub(element, t("FolderId"), attrib={"Id": folder.folder_id, "ChangeKey": folder.change_key})
    if not full:
        return element
    if folder.parent is not None:
        attrib = {"Id": folder.parent.folder_id, "ChangeKey": folder.parent.change_key}
        sub(element, t("ParentFolderId"), attrib=attrib)
    sub(element, t("FolderClass"), folder.folder_class)
    sub(element, t("DisplayName"), folder.name)
    sub(element, t("TotalCount"), str(len(folder.items)))
    sub(element, t("ChildFolderCount"), str(len(folder.children)))
    sub(element, t("UnreadCount"), str(folder.unread_count))
    return element
