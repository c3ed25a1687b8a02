"""exchangelib items, or GetItem's XML of them, → the library-independent ``Message``.

``to_message`` takes either an exchangelib item or the ``t:Message`` element of a GetItem answer
(what ``_services.MessageGetItem`` returns). The element is read directly with lxml: exchangelib's
``Message.from_xml`` builds an object of some 70 fields, each through a descriptor, with
``Mailbox``, ``MessageHeader`` and ``Attachment`` objects inside, which was ~40 % of the daemon's
CPU on a loopback poll (benchmarks/README.md, "CPU per message"). The direct reading follows
exchangelib 5.6.0's field parsers for the fields a ``Message`` needs, and hands anything it does
not read the same way (another item type, a datetime not in the ``…Z`` form, a body type, size or
mailbox element it does not expect) to exchangelib's own parser, so the value is the same either
way: ``tests/ews/test_direct_conversion.py`` compares both paths on the mail corpus.
"""

from __future__ import annotations

import contextlib
import functools
import re
from datetime import UTC, datetime
from typing import Any

import structlog
from exchangelib import FileAttachment, HTMLBody, ItemAttachment
from exchangelib.folders import BaseFolder
from exchangelib.util import TNS, xml_text_to_value
from lxml import etree

from listener.errors import PermanentError
from listener.model import Address, Attachment, Importance, Message

__all__ = ["FETCH_FIELDS", "ConversionError", "conversion_bug", "to_message"]

log = structlog.get_logger("listener.sources.ews")

# Only what a Message needs: no MimeContent, no attachment content (both load on demand).
FETCH_FIELDS = (
    "item_class",
    "subject",
    "sender",
    "author",
    "reply_to",
    "to_recipients",
    "cc_recipients",
    "bcc_recipients",
    "datetime_received",
    "datetime_sent",
    "importance",
    "categories",
    "is_read",
    "has_attachments",
    "headers",
    "text_body",
    "body",
    "attachments",
    "message_id",
    "conversation_id",
)


class ConversionError(PermanentError):
    """Our code failed on what Exchange sent: a bug in ews-listener, not a failure that heals.

    Retrying runs the same code on the same answer, so the message is dead-lettered at once
    (permanent) instead of retried for hours, with a reason that names the exception; the
    traceback is logged once as ``ews.conversion_bug``. Issue 11, point 5: a zero-byte attachment
    raised exchangelib's ``ValueError: FileAttachment must have an account`` inside our content
    loader and was retried as if Exchange were down.
    """


def conversion_bug(doing: str, error: Exception) -> ConversionError:
    """Log ``error`` with its traceback and return the :class:`ConversionError` to raise."""
    log.error(
        "ews.conversion_bug", doing=doing, error=f"{type(error).__name__}: {error}", exc_info=error
    )
    return ConversionError(
        f"bug in ews-listener's conversion ({doing}): {type(error).__name__}: {error}; "
        "not retried: please report it with the ews.conversion_bug traceback from the log, "
        "then `dead-letters replay` once fixed"
    )


_IMPORTANCE: dict[str, Importance] = {"Low": "low", "Normal": "normal", "High": "high"}


def _address(mailbox: Any) -> Address | None:
    # ``MAILER DAEMON <>`` or ``From: foo`` reach us as a name without an address; keep the name
    # (email "") rather than report no sender at all (issue 11, point 19).
    email = getattr(mailbox, "email_address", None) if mailbox is not None else None
    name = getattr(mailbox, "name", None) if mailbox is not None else None
    if not email and not name:
        return None
    return Address(email=email or "", name=name or None)


def _addresses(mailboxes: Any) -> tuple[Address, ...]:
    found = (_address(m) for m in (mailboxes or ()))
    return tuple(a for a in found if a is not None)


def _utc(value: Any) -> datetime | None:
    if value is None:
        return None
    return datetime.fromtimestamp(value.timestamp(), tz=UTC)


def _attachment(att: Any) -> Attachment:
    if isinstance(att, ItemAttachment):
        name = att.name or "attached-message"
        return Attachment(
            attachment_id=att.attachment_id.id,
            name=name if name.lower().endswith(".eml") else f"{name}.eml",
            content_type="message/rfc822",
            size=att.size,
            is_inline=bool(att.is_inline),
            kind="item",
        )
    assert isinstance(att, FileAttachment)
    return Attachment(
        attachment_id=att.attachment_id.id,
        name=att.name or "attachment",
        content_type=att.content_type or "application/octet-stream",
        size=att.size,
        content_id=att.content_id or None,
        is_inline=bool(att.is_inline),
    )


def to_message(item: Any, *, mailbox: str, folder: str, account: Any = None) -> Message:
    """Convert one fetched exchangelib item (a Message or another item type), or GetItem's XML
    element of one (then with the ``account`` it was fetched with), to a ``Message``."""
    if isinstance(item, etree._Element):
        return _from_element(item, account=account, mailbox=mailbox, folder=folder)
    body = getattr(item, "body", None)
    html = str(body) if isinstance(body, HTMLBody) else None
    text = getattr(item, "text_body", None)
    if text is None and body is not None and html is None:
        text = str(body)
    conversation = getattr(item, "conversation_id", None)
    headers = tuple((h.name, h.value or "") for h in (getattr(item, "headers", None) or ()))
    return Message(
        mailbox=mailbox,
        folder=folder,
        item_id=item.id,
        source="ews",
        item_class=item.item_class or None,
        internet_message_id=getattr(item, "message_id", None),
        conversation_id=conversation.id if conversation is not None else None,
        subject=item.subject or "",
        sender=_address(getattr(item, "sender", None)),
        from_=_address(getattr(item, "author", None)),
        reply_to=_addresses(getattr(item, "reply_to", None)),
        to=_addresses(getattr(item, "to_recipients", None)),
        cc=_addresses(getattr(item, "cc_recipients", None)),
        bcc=_addresses(getattr(item, "bcc_recipients", None)),
        received_at=_utc(item.datetime_received),
        sent_at=_utc(getattr(item, "datetime_sent", None)),
        importance=_IMPORTANCE.get(item.importance or "Normal", "normal"),
        categories=tuple(item.categories or ()),
        is_read=bool(getattr(item, "is_read", False)),
        has_attachments=bool(item.has_attachments),
        headers=headers,
        text_body=text,
        html_body=html,
        attachments=tuple(_attachment(a) for a in (item.attachments or ())),
    )


# --- GetItem's XML read directly (see the module docstring) -----------------------------------

_T = f"{{{TNS}}}"
_MESSAGE = f"{_T}Message"
_MAILBOX = f"{_T}Mailbox"
_STRING = f"{_T}String"
_HEADER = f"{_T}InternetMessageHeader"
_ITEM_ATTACHMENT = f"{_T}ItemAttachment"
_FILE_ATTACHMENT = f"{_T}FileAttachment"
# EWSDateTime.from_string reads "…Z" with strptime("%Y-%m-%dT%H:%M:%SZ"); other forms (an offset,
# fractions of a second, a naive time in the account's zone) go to exchangelib.
_UTC_SECOND = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})Z\Z")
_BODY_TYPES = {"HTML": True, "Text": False}


class _NotDirect(Exception):
    """A value the direct reading leaves to exchangelib's parser."""


def _from_element(elem: Any, *, account: Any, mailbox: str, folder: str) -> Message:
    """``to_message`` of GetItem's element of an item, without exchangelib's object model when
    it is a ``t:Message`` (the element is cleared afterwards, as exchangelib's ``from_xml`` does:
    the answer's tree shrinks as its items are converted)."""
    if elem.tag == _MESSAGE:
        with contextlib.suppress(Exception):  # any surprise: exchangelib's reading decides below
            message = _message(elem, mailbox=mailbox, folder=folder)
            _clear(elem)
            return message
    # Another item type, or a value read differently: the object model, as before.
    item = BaseFolder.item_model_from_tag(elem.tag).from_xml(elem=elem, account=account)
    return to_message(item, mailbox=mailbox, folder=folder)


def _clear(elem: Any) -> None:
    elem.clear()
    parent = elem.getparent()
    if parent is not None:
        parent.remove(elem)


def _children(elem: Any) -> dict[Any, Any]:
    # The first child of each tag, as elem.find(tag) finds it: one pass instead of a search per
    # field (a t:Message of FETCH_FIELDS has ~20 children and ~20 fields are read).
    children: dict[Any, Any] = {}
    for child in elem:
        children.setdefault(child.tag, child)
    return children


def _text(children: dict[Any, Any], name: str) -> str | None:
    # exchangelib.util.get_xml_attr: the first child's text, "" read as None
    child = children.get(_T + name)
    if child is None:
        return None
    return child.text or None


def _flag(children: dict[Any, Any], name: str) -> bool:
    # BooleanField: true/on/false/off in any case, anything else None; the Message takes bool()
    text = _text(children, name)
    return bool(xml_text_to_value(text, bool)) if text is not None else False


@functools.lru_cache(maxsize=4096)
def _address_value(email: str | None, name: str | None) -> Address | None:
    # A frozen value without private state, so one instance can serve every message that names
    # the same mailbox (the watched one is in nearly every To:); validated once.
    if not email and not name:
        return None
    return Address(email=email or "", name=name or None)


def _mailbox(elem: Any) -> Address | None:
    children = _children(elem)
    return _address_value(_text(children, "EmailAddress"), _text(children, "Name"))


def _one(children: dict[Any, Any], name: str) -> Address | None:
    # MailboxField: the wrapper (t:Sender, t:From) must hold a t:Mailbox (exchangelib raises)
    wrapper = children.get(_T + name)
    if wrapper is None:
        return None
    nested = wrapper.find(_MAILBOX)
    if nested is None:
        raise _NotDirect(name)
    return _mailbox(nested)


def _many(children: dict[Any, Any], name: str) -> tuple[Address, ...]:
    wrapper = children.get(_T + name)
    if wrapper is None:
        return ()
    found = (_mailbox(m) for m in wrapper.findall(_MAILBOX))
    return tuple(a for a in found if a is not None)


def _time(children: dict[Any, Any], name: str) -> datetime | None:
    text = _text(children, name)
    if text is None:
        return None
    match = _UTC_SECOND.match(text)
    if match is None:
        raise _NotDirect(name)
    year, month, day, hour, minute, second = map(int, match.groups())
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def _size(att: dict[Any, Any]) -> int | None:
    text = _text(att, "Size")
    if text is None:
        return None
    if not text.isdigit():
        raise _NotDirect("Size")  # IntegerField logs and drops it: exchangelib's words
    return int(text)


def _attachment_id(att: dict[Any, Any]) -> str:
    found = att.get(_T + "AttachmentId")
    if found is None:
        raise _NotDirect("AttachmentId")  # to_message fails on it: the same failure
    attachment_id = found.get("Id") or None
    if attachment_id is None:
        raise _NotDirect("AttachmentId")
    return str(attachment_id)


def _attachments(children: dict[Any, Any]) -> tuple[Attachment, ...]:
    wrapper = children.get(_T + "Attachments")
    if wrapper is None:
        return ()
    out: list[Attachment] = []
    # exchangelib's AttachmentField lists item attachments first, then file attachments.
    for att in map(_children, wrapper.findall(_ITEM_ATTACHMENT)):
        name = _text(att, "Name") or "attached-message"
        out.append(
            Attachment(
                attachment_id=_attachment_id(att),
                name=name if name.lower().endswith(".eml") else f"{name}.eml",
                content_type="message/rfc822",
                size=_size(att),
                is_inline=_flag(att, "IsInline"),
                kind="item",
            )
        )
    for att in map(_children, wrapper.findall(_FILE_ATTACHMENT)):
        out.append(
            Attachment(
                attachment_id=_attachment_id(att),
                name=_text(att, "Name") or "attachment",
                content_type=_text(att, "ContentType") or "application/octet-stream",
                size=_size(att),
                content_id=_text(att, "ContentId") or None,
                is_inline=_flag(att, "IsInline"),
            )
        )
    return tuple(out)


def _message(elem: Any, *, mailbox: str, folder: str) -> Message:
    children = _children(elem)
    item_id = children.get(_T + "ItemId")
    body = children.get(_T + "Body")
    body_text = _text(children, "Body")
    html = None
    text = _text(children, "TextBody")
    if body is not None and body_text is not None:
        is_html = _BODY_TYPES.get(body.get("BodyType"))
        if is_html is None:
            raise _NotDirect("BodyType")
        if is_html:
            html = body_text
        elif text is None:
            text = body_text
    conversation = children.get(_T + "ConversationId")
    categories = children.get(_T + "Categories")
    headers = children.get(_T + "InternetMessageHeaders")
    return Message(
        mailbox=mailbox,
        folder=folder,
        item_id=None if item_id is None else item_id.get("Id") or None,
        source="ews",
        item_class=_text(children, "ItemClass"),
        internet_message_id=_text(children, "InternetMessageId"),
        conversation_id=None if conversation is None else conversation.get("Id") or None,
        subject=_text(children, "Subject") or "",
        sender=_one(children, "Sender"),
        from_=_one(children, "From"),
        reply_to=_many(children, "ReplyTo"),
        to=_many(children, "ToRecipients"),
        cc=_many(children, "CcRecipients"),
        bcc=_many(children, "BccRecipients"),
        received_at=_time(children, "DateTimeReceived"),
        sent_at=_time(children, "DateTimeSent"),
        importance=_IMPORTANCE.get(_text(children, "Importance") or "Normal", "normal"),
        categories=()
        if categories is None
        else tuple(s.text for s in categories.findall(_STRING) if s.text is not None),
        is_read=_flag(children, "IsRead"),
        has_attachments=_flag(children, "HasAttachments"),
        headers=()
        if headers is None
        else tuple((h.get("HeaderName") or None, h.text or "") for h in headers.findall(_HEADER)),
        text_body=text,
        html_body=html,
        attachments=_attachments(children),
    )
