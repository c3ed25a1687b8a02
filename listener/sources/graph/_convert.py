"""Graph message JSON → :class:`listener.model.Message`, with the values EWS gives for the same
mail (``listener/sources/ews/_convert.py::to_message``).

What must match across protocols, because the idempotency key and ``message_fingerprint`` are
built from it (a mailbox switched from EWS to Graph must not hand anything over twice):
``internetMessageId`` exactly as sent, ``sentDateTime`` to the second, the from (else sender)
address, the subject. Bodies follow EWS: ``text_body`` is always the text rendering (EWS
``TextBody``), ``html_body`` only for an HTML message. Graph's ``hasAttachments`` leaves inline
parts out while EWS lists every attachment, so a message whose HTML names a ``cid:`` part has its
attachments read too (``needs_attachments``). Guarded by
``tests/graph_source/test_conversion.py::test_same_message_through_ews_and_graph``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from listener.model import Address, Attachment, Importance, Message

__all__ = [
    "ATTACHMENT_SELECT",
    "MESSAGE_SELECT",
    "is_html",
    "needs_attachments",
    "to_attachment",
    "to_message",
]

#: Exactly what a Message needs (no MIME, no attachment content: both load on demand).
MESSAGE_SELECT = (
    "id",
    "internetMessageId",
    "conversationId",
    "subject",
    "sender",
    "from",
    "replyTo",
    "toRecipients",
    "ccRecipients",
    "bccRecipients",
    "receivedDateTime",
    "sentDateTime",
    "importance",
    "categories",
    "isRead",
    "hasAttachments",
    "internetMessageHeaders",
    "body",
)
#: Attachment metadata only: ``contentBytes`` stays on the server until a handler asks.
ATTACHMENT_SELECT = ("id", "name", "contentType", "size", "isInline", "contentId")
_ITEM_ATTACHMENT = "#microsoft.graph.itemAttachment"
_IMPORTANCE: dict[str, Importance] = {"low": "low", "normal": "normal", "high": "high"}


def is_html(data: dict[str, Any]) -> bool:
    body = data.get("body") or {}
    return str(body.get("contentType", "")).lower() == "html"


def needs_attachments(data: dict[str, Any]) -> bool:
    """Whether the attachment list must be read (Graph's ``hasAttachments`` omits inline ones)."""
    if data.get("hasAttachments"):
        return True
    return is_html(data) and "cid:" in str((data.get("body") or {}).get("content", "")).lower()


def _address(value: Any) -> Address | None:
    if not isinstance(value, dict):
        return None
    email_address = value.get("emailAddress") or {}
    email = email_address.get("address") or ""
    name = email_address.get("name") or None
    if name is not None and name.strip().lower() == email.strip().lower():
        # Graph names a recipient without a display name by its address ("name":
        # "fannyd@contoso.com" in message-move); EWS leaves the name out.
        name = None
    if not email and not name:
        return None
    return Address(email=email, name=name)


def _addresses(values: Any) -> tuple[Address, ...]:
    found = (_address(v) for v in (values or ()))
    return tuple(a for a in found if a is not None)


def _time(value: Any) -> datetime | None:
    if not value:
        return None
    parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone(UTC)


def to_attachment(data: dict[str, Any]) -> Attachment | None:
    """A file or item attachment; None for a reference attachment (a link, no content)."""
    kind = data.get("@odata.type", "")
    if kind == _ITEM_ATTACHMENT:
        name = data.get("name") or "attached-message"
        return Attachment(
            attachment_id=data["id"],
            name=name if name.lower().endswith(".eml") else f"{name}.eml",
            content_type="message/rfc822",
            size=data.get("size"),
            is_inline=bool(data.get("isInline")),
            kind="item",
        )
    if kind.endswith("referenceAttachment"):
        return None
    return Attachment(
        attachment_id=data["id"],
        name=data.get("name") or "attachment",
        content_type=data.get("contentType") or "application/octet-stream",
        size=data.get("size"),
        content_id=data.get("contentId") or None,
        is_inline=bool(data.get("isInline")),
    )


def to_message(
    data: dict[str, Any],
    *,
    mailbox: str,
    folder: str,
    text_body: str | None,
    attachments: list[dict[str, Any]] | None,
) -> Message:
    """``data`` (a message as ``MESSAGE_SELECT`` reads it) as a ``Message``; ``text_body`` is the
    text rendering of an HTML body (None for a text message: its body is the text)."""
    body = data.get("body") or {}
    html = body.get("content") if is_html(data) else None
    text = text_body if html is not None else body.get("content")
    headers = tuple(
        (h.get("name", ""), h.get("value") or "")
        for h in (data.get("internetMessageHeaders") or ())
    )
    found = (to_attachment(a) for a in (attachments or ()))
    return Message(
        mailbox=mailbox,
        folder=folder,
        item_id=data["id"],
        source="graph",
        item_class=None,
        internet_message_id=data.get("internetMessageId"),
        conversation_id=data.get("conversationId"),
        subject=data.get("subject") or "",
        sender=_address(data.get("sender")),
        from_=_address(data.get("from")),
        reply_to=_addresses(data.get("replyTo")),
        to=_addresses(data.get("toRecipients")),
        cc=_addresses(data.get("ccRecipients")),
        bcc=_addresses(data.get("bccRecipients")),
        received_at=_time(data.get("receivedDateTime")),
        sent_at=_time(data.get("sentDateTime")),
        importance=_IMPORTANCE.get(str(data.get("importance", "normal")).lower(), "normal"),
        categories=tuple(data.get("categories") or ()),
        is_read=bool(data.get("isRead")),
        has_attachments=bool(data.get("hasAttachments")),
        headers=headers,
        text_body=text,
        html_body=html,
        attachments=tuple(a for a in found if a is not None),
    )
