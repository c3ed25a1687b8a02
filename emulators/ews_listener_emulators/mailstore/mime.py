"""Turn raw RFC 5322 / MIME bytes into store items with the standard ``email`` package.

Any .eml can be delivered: headers, the text and HTML bodies, file attachments, inline parts with a
``Content-ID`` (inside ``multipart/related``) and attached messages (``message/rfc822`` become item
attachments, parsed recursively).

Nothing in the message is dropped (issue 11, point 19); where Exchange's behaviour is known it is
followed, elsewhere the information is kept:

- A part with a file name (``Content-Type: …; name=`` or ``Content-Disposition: …; filename=``) is
  an attachment even without ``Content-Disposition: attachment``, text parts included, as in
  Exchange (only a single-part message's own content stays its body).
- A text part outside ``multipart/alternative`` that is not the body (a mailing list's footer after
  an attachment, a second text part) becomes an attachment named ``ATT00001.txt``/``.htm``, the
  names Exchange gives them. Other renderings inside ``multipart/alternative`` are not content.
- A sender without an ``@`` (``From: foo``, ``MAILER DAEMON <>``) is kept as a mailbox with a
  name and no address (rendered without ``t:EmailAddress``), not dropped. Recipient lists still
  keep only real addresses.
- Folded headers are unfolded as RFC 5322 §2.2.3 says (the CRLF goes, the tab or space after it
  stays): ``Subject: a<CRLF><TAB>b`` is ``a<TAB>b``.
"""

from __future__ import annotations

import email.utils
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email import policy
from email.errors import HeaderParseError
from email.header import decode_header, make_header
from email.message import EmailMessage, Message
from email.parser import BytesParser

from ews_listener_emulators.mailstore.model import Address, Attachment, Item

__all__ = ["build_mime", "parse_mime"]

# compat32, not policy.default: the default policy builds a header object for every header it
# touches (~0.1 ms each), which made delivering 10k messages take tens of seconds. Headers that
# need decoding go through email.header explicitly below.
_PARSER = BytesParser(policy=policy.compat32)
_IMPORTANCE = {"high": "High", "low": "Low", "normal": "Normal", "1": "High", "5": "Low"}


def _decoded(value: object) -> str:
    text = str(value)
    if "\n" in text or "\r" in text:
        text = _LINE_BREAK.sub("", text)  # unfold: only the line break goes
    if "=?" not in text:
        return text
    try:
        return str(make_header(decode_header(text)))
    except _UNDECODABLE:
        # One broken encoded word: decode the others, keep that one as it came.
        return _ENCODED_WORD.sub(_decoded_word, text)


_LINE_BREAK = re.compile(r"\r?\n|\r")
_UNDECODABLE = (LookupError, ValueError, UnicodeDecodeError, HeaderParseError)
_ENCODED_WORD = re.compile(r"=\?[^?\s]+\?[bBqQ]\?[^?\s]*\?=")


def _decoded_word(match: re.Match[str]) -> str:
    try:
        return str(make_header(decode_header(match.group(0))))
    except _UNDECODABLE:
        return match.group(0)


def _addresses(message: Message, name: str, *, keep_names: bool = False) -> list[Address]:
    """The addresses of header ``name``; ``keep_names``: also those without an ``@``.

    ``keep_names`` is for the originator headers (From, Sender), where ``MAILER DAEMON <>`` or
    ``From: foo`` is the only sender there is. Recipient lists keep only real addresses: there
    getaddresses turns junk (``not an address, @@@``) into fragments, not names.
    """
    values = message.get_all(name)
    if not values:
        return []
    found: list[Address] = []
    for value in (_decoded(v) for v in values):
        if keep_names and not _ADDRESS_SYNTAX.search(value):
            # A bare phrase (``From: Mail Delivery System``): getaddresses keeps its first word.
            if value.strip():
                found.append(Address(email="", name=value.strip()))
            continue
        for display, addr in email.utils.getaddresses([value]):
            if "@" in addr:
                found.append(Address(email=addr, name=display or ""))
            elif keep_names and (display or addr):  # ``MAILER DAEMON <>``: a name, no address
                found.append(Address(email="", name=display or addr))
    return found


_ADDRESS_SYNTAX = re.compile(r"[@<>,;:\"]")


def _date(message: Message) -> datetime | None:
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


def _importance(message: Message) -> str:
    value = str(message.get("Importance") or "").strip().lower()
    if value in _IMPORTANCE:
        return _IMPORTANCE[value]
    priority = str(message.get("X-Priority") or "").strip()[:1]
    return _IMPORTANCE.get(priority, "Normal")


def _text(part: Message) -> str:
    payload = part.get_payload(decode=True)
    data = payload if isinstance(payload, bytes) else b""
    charset = part.get_content_charset() or "utf-8"
    try:
        return data.decode(charset, "replace")
    except LookupError:
        return data.decode("utf-8", "replace")


def _find_bodies(part: Message, found: dict[str, Message], *, top: bool = True) -> None:
    """The body: the first inline text/plain and text/html parts of the first part that has one.

    Both renderings come from one ``multipart/alternative``; outside one, the first text part
    found is the body and later ones are not (``_collect`` makes them ATT00001.txt…). A named part
    inside a multipart is an attachment, not a body candidate. Attached messages are not entered.
    """
    content_type = part.get_content_type()
    if part.get_content_maintype() == "message":
        return  # an attached message, or a report's machine part (parsed as header blocks)
    if part.is_multipart():
        alternative = content_type == "multipart/alternative"
        for child in part.get_payload():
            assert isinstance(child, Message)
            _find_bodies(child, found, top=False)
            if found and not alternative:
                return
        return
    if part.get_content_disposition() == "attachment":
        return
    if not top and part.get_filename() is not None:
        return
    if content_type == "text/html":
        found.setdefault("html", part)
    elif content_type == "text/plain":
        found.setdefault("plain", part)


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
    now = datetime.now(UTC)  # full precision, see ``store._now``
    bodies: dict[str, Message] = {}
    _find_bodies(message, bodies)
    item = Item(
        serial=serial,
        item_id=item_id,
        folder=None,
        item_class=item_class,
        subject=_decoded(message.get("Subject") or ""),
        text_body=_text(bodies["plain"]) if "plain" in bodies else None,
        html_body=_text(bodies["html"]) if "html" in bodies else None,
        mime=raw,
        headers=[(name, _decoded(value)) for name, value in message.items()],
        internet_message_id=str(message.get("Message-ID") or "").strip() or None,
        in_reply_to=str(message.get("In-Reply-To") or "").strip() or None,
        references=" ".join(str(message.get("References") or "").split()) or None,
        sent_at=_date(message),
        received_at=(received_at or now).astimezone(UTC),
        created_at=now,
        modified_at=now,
        importance=_importance(message),
        read_receipt_requested=message.get("Disposition-Notification-To") is not None,
        delivery_receipt_requested=message.get("Return-Receipt-To") is not None,
    )
    item.conversation_topic = item.subject
    senders = _addresses(message, "From", keep_names=True)
    item.from_ = senders[0] if senders else None
    explicit_sender = _addresses(message, "Sender", keep_names=True)
    item.sender = explicit_sender[0] if explicit_sender else item.from_
    item.to = _addresses(message, "To")
    item.cc = _addresses(message, "Cc")
    item.bcc = _addresses(message, "Bcc")
    item.reply_to = _addresses(message, "Reply-To")
    _collect(message, _Walk({id(p) for p in bodies.values()}, item, attachment_id))
    return item


@dataclass
class _Walk:
    """What ``_collect`` carries through the MIME tree of one message."""

    bodies: set[int]
    item: Item
    attachment_id: Callable[[], str]
    unnamed_texts: int = 0  # ATT00001.txt, ATT00002.htm, … as Exchange numbers them


_REPORT_PARTS = frozenset(
    {
        "message/delivery-status",
        "message/disposition-notification",
        "message/global-delivery-status",
        "message/global-disposition-notification",
    }
)
_TEXT_SUFFIX = {"text/plain": "txt", "text/html": "htm"}


def _collect(
    part: Message, walk: _Walk, *, in_related: bool = False, in_alternative: bool = False
) -> None:
    item, attachment_id = walk.item, walk.attachment_id
    if id(part) in walk.bodies:
        return
    content_type = part.get_content_type()
    if content_type == "message/rfc822":
        payload = part.get_payload()
        inner = payload[0] if isinstance(payload, list) else payload
        assert isinstance(inner, Message)
        nested = parse_mime(
            inner.as_bytes(),
            serial=0,
            item_id="",
            attachment_id=attachment_id,
            received_at=item.received_at,
        )
        name = _decoded(part.get_filename() or "") or nested.subject or "message"
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
    if content_type in _REPORT_PARTS:
        # The machine-readable part of an NDR or read receipt: Exchange keeps it in the report's
        # properties, not as an attachment; it stays in the MimeContent.
        return
    if part.is_multipart():
        related = in_related or content_type == "multipart/related"
        alternative = content_type == "multipart/alternative"
        for child in part.get_payload():
            assert isinstance(child, Message)
            _collect(child, walk, in_related=related, in_alternative=alternative)
        return
    disposition = part.get_content_disposition()
    filename = part.get_filename()
    content_id = str(part.get("Content-ID") or "").strip().strip("<>") or None
    name = _decoded(filename or "") or content_id or "attachment"
    if disposition is None and filename is None and content_type.startswith("text/"):
        if in_alternative:
            return  # another rendering of the body (text/enriched, a second text/plain)
        # A text part that is not the body: Exchange makes it an attachment ATT00001.txt.
        walk.unnamed_texts += 1
        suffix = _TEXT_SUFFIX.get(content_type, content_type.partition("/")[2] or "txt")
        name = f"ATT{walk.unnamed_texts:05d}.{suffix}"
    payload = part.get_payload(decode=True)
    item.attachments.append(
        Attachment(
            attachment_id=attachment_id(),
            name=name,
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
