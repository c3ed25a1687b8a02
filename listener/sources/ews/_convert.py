"""exchangelib items → the library-independent :class:`listener.model.Message`."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import structlog
from exchangelib import FileAttachment, HTMLBody, ItemAttachment

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


def to_message(item: Any, *, mailbox: str, folder: str) -> Message:
    """Convert one fetched exchangelib item (a Message or another item type) to a ``Message``."""
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
