"""Turn raw RFC 5322 / MIME bytes into store items with the standard ``email`` package.

Any .eml can be delivered: headers, the text and HTML bodies, file attachments, inline parts with a
``Content-ID`` (inside ``multipart/related``) and attached messages (``message/rfc822`` become item
attachments, parsed recursively).
"""

from __future__ import annotations

import email.utils
from collections.abc import Callable
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser

from listener.emulator.mailstore.model import Address, Attachment, Item

__all__ = ["build_mime", "parse_mime"]

_PARSER = BytesParser(policy=policy.default)
_IMPORTANCE = {"high": "High", "low": "Low", "normal": "Normal", "1": "High", "5": "Low"}


def _addresses(message: EmailMessage, name: str) -> list[Address]:
    header = message.get(name)
    if header is None:
        return []
    try:
        found = getattr(header, "addresses", ())
        return [Address(email=a.addr_spec, name=a.display_name or "") for a in found if a.addr_spec]
    except (TypeError, ValueError, IndexError):
        return []


def _date(message: EmailMessage) -> datetime | None:
    value = message.get("Date")
    if value is None:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(str(value))
    except (TypeError, ValueError, IndexError):
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC).replace(microsecond=0)


def _importance(message: EmailMessage) -> str:
    value = str(message.get("Importance") or "").strip().lower()
    if value in _IMPORTANCE:
        return _IMPORTANCE[value]
    priority = str(message.get("X-Priority") or "").strip()[:1]
    return _IMPORTANCE.get(priority, "Normal")


def _text(part: EmailMessage) -> str:
    try:
        content = part.get_content()
    except (LookupError, ValueError):
        content = part.get_payload(decode=True) or b""
    if isinstance(content, bytes):
        return content.decode("utf-8", "replace")
    return str(content)


def parse_mime(
    raw: bytes,
    *,
    serial: int,
    item_id: str,
    attachment_id: Callable[[], str],
    item_class: str = "IPM.Note",
    received_at: datetime | None = None,
) -> Item:
    """Parse ``raw`` into an unfiled ``Item``; ``attachment_id`` makes fresh attachment ids."""
    message = _PARSER.parsebytes(raw)
    assert isinstance(message, EmailMessage)
    now = datetime.now(UTC).replace(microsecond=0)
    html_part = message.get_body(preferencelist=("html",))
    text_part = message.get_body(preferencelist=("plain",))
    item = Item(
        serial=serial,
        item_id=item_id,
        folder=None,
        item_class=item_class,
        subject=str(message.get("Subject") or ""),
        text_body=_text(text_part) if isinstance(text_part, EmailMessage) else None,
        html_body=_text(html_part) if isinstance(html_part, EmailMessage) else None,
        mime=raw,
        headers=[(name, str(value)) for name, value in message.items()],
        internet_message_id=str(message.get("Message-ID") or "").strip() or None,
        in_reply_to=str(message.get("In-Reply-To") or "").strip() or None,
        references=str(message.get("References") or "").strip() or None,
        sent_at=_date(message),
        received_at=(received_at or now).astimezone(UTC).replace(microsecond=0),
        created_at=now,
        modified_at=now,
        importance=_importance(message),
        read_receipt_requested=message.get("Disposition-Notification-To") is not None,
        delivery_receipt_requested=message.get("Return-Receipt-To") is not None,
    )
    item.conversation_topic = item.subject
    senders = _addresses(message, "From")
    item.from_ = senders[0] if senders else None
    explicit_sender = _addresses(message, "Sender")
    item.sender = explicit_sender[0] if explicit_sender else item.from_
    item.to = _addresses(message, "To")
    item.cc = _addresses(message, "Cc")
    item.bcc = _addresses(message, "Bcc")
    item.reply_to = _addresses(message, "Reply-To")
    bodies = {id(p) for p in (html_part, text_part) if p is not None}
    _collect(message, bodies, item, attachment_id, in_related=False)
    return item


def _collect(
    part: EmailMessage,
    bodies: set[int],
    item: Item,
    attachment_id: Callable[[], str],
    *,
    in_related: bool,
) -> None:
    if id(part) in bodies:
        return
    content_type = part.get_content_type()
    if content_type == "message/rfc822":
        inner = part.get_payload(0)
        assert isinstance(inner, EmailMessage)
        nested = parse_mime(
            inner.as_bytes(policy=policy.SMTP),
            serial=0,
            item_id="",
            attachment_id=attachment_id,
            received_at=item.received_at,
        )
        name = part.get_filename() or nested.subject or "message"
        item.attachments.append(
            Attachment(
                attachment_id=attachment_id(),
                name=name,
                content_type=content_type,
                item=nested,
                last_modified=item.received_at,
            )
        )
        return
    if part.is_multipart():
        related = in_related or content_type == "multipart/related"
        for child in part.iter_parts():
            assert isinstance(child, EmailMessage)
            _collect(child, bodies, item, attachment_id, in_related=related)
        return
    if part.get_content_maintype() != "multipart":
        if part.get_content_disposition() is None and content_type.startswith("text/"):
            # A second text part without a disposition is part of the body Exchange shows.
            return
        payload = part.get_payload(decode=True)
        content_id = str(part.get("Content-ID") or "").strip().strip("<>") or None
        disposition = part.get_content_disposition()
        item.attachments.append(
            Attachment(
                attachment_id=attachment_id(),
                name=part.get_filename() or content_id or "attachment",
                content_type=content_type,
                content=payload if isinstance(payload, bytes) else b"",
                content_id=content_id,
                is_inline=disposition == "inline" or (in_related and content_id is not None),
                last_modified=item.received_at,
            )
        )


def build_mime(item: Item) -> bytes:
    """MIME bytes for an item created from fields (CreateItem without MimeContent)."""
    message = EmailMessage()
    message["Subject"] = item.subject
    if item.from_ is not None:
        message["From"] = email.utils.formataddr((item.from_.name, item.from_.email))
    if item.to:
        message["To"] = ", ".join(email.utils.formataddr((a.name, a.email)) for a in item.to)
    if item.cc:
        message["Cc"] = ", ".join(email.utils.formataddr((a.name, a.email)) for a in item.cc)
    message["Date"] = email.utils.format_datetime(item.sent_at or datetime.now(UTC))
    message["Message-ID"] = item.internet_message_id or email.utils.make_msgid(domain="emulator")
    message.set_content(item.text_body or "")
    if item.html_body:
        message.add_alternative(item.html_body, subtype="html")
    return message.as_bytes(policy=policy.SMTP)
