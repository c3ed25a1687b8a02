"""Store items and attachments as Graph v1.0 JSON, typed as graph-mail-v1.0.openapi.json says.

A message carries the default property set of ``GET /messages/{id}`` in the order the docs'
``message-get`` sample shows; ``internetMessageHeaders`` and ``uniqueBody`` only when ``$select``
names them, as Graph does (``message-get-internetmessageheaders``). ``$select`` keeps the asked
properties plus ``id``, ``@odata.etag`` and ``@odata.type``. Enumerations are Graph's camelCase
(``importance`` low | normal | high, ``flagStatus`` notFlagged | flagged | complete), times are
UTC whole seconds with a ``Z`` (the docs' samples), recipients are ``{"emailAddress": {"name",
"address"}}`` with the address as the name when there is none (``message-move``: ``"name":
"fannyd@contoso.com"``).

The body comes as stored (HTML when the message has one) unless ``Prefer:
outlook.body-content-type="text"`` or ``"html"`` asks for the other, which the answer confirms with
``Preference-Applied`` (``message-get-body-text``).
"""

from __future__ import annotations

import base64
import hashlib
import html
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from html.parser import HTMLParser
from typing import Any
from urllib.parse import quote

from ews_listener_emulators.graph._contract import GraphError
from ews_listener_emulators.graph._ids import folder_id, item_id, to_rest_id
from ews_listener_emulators.store import Address, Attachment, Flag, Item

__all__ = [
    "MESSAGE_PROPERTIES",
    "Shape",
    "attachment_json",
    "body_preference",
    "format_datetime",
    "html_to_text",
    "message_json",
    "parse_select",
    "recipient",
]

#: The default properties of a message, in the order of the docs' ``message-get`` example.
DEFAULT_PROPERTIES = (
    "createdDateTime",
    "lastModifiedDateTime",
    "changeKey",
    "categories",
    "receivedDateTime",
    "sentDateTime",
    "hasAttachments",
    "internetMessageId",
    "subject",
    "bodyPreview",
    "importance",
    "parentFolderId",
    "conversationId",
    "isDeliveryReceiptRequested",
    "isReadReceiptRequested",
    "isRead",
    "isDraft",
    "webLink",
    "inferenceClassification",
    "body",
    "sender",
    "from",
    "toRecipients",
    "ccRecipients",
    "bccRecipients",
    "replyTo",
    "flag",
)
#: Everything ``$select`` may name on a message (structural properties of the schema we keep).
MESSAGE_PROPERTIES = ("id", *DEFAULT_PROPERTIES, "internetMessageHeaders", "uniqueBody")
_BY_LOWER = {name.lower(): name for name in MESSAGE_PROPERTIES}
#: What an item attachment's embedded item carries (``attachment-get-item-expand``): no folder,
#: no change key, no categories, no etag.
_EMBEDDED = frozenset(
    {
        "createdDateTime",
        "lastModifiedDateTime",
        "receivedDateTime",
        "sentDateTime",
        "hasAttachments",
        "internetMessageId",
        "subject",
        "importance",
        "conversationId",
        "isDeliveryReceiptRequested",
        "isReadReceiptRequested",
        "isRead",
        "isDraft",
        "body",
        "sender",
        "from",
        "toRecipients",
        "ccRecipients",
    }
)
_ANNOTATIONS = ("@odata.type", "@odata.etag", "id")
_PREVIEW_LENGTH = 255  # Graph's bodyPreview: "the first 255 characters of the message body"
_FLAG_STATUS = {"NotFlagged": "notFlagged", "Flagged": "flagged", "Complete": "complete"}
# Meeting messages are derived types of message; ``@odata.type`` names them always.
_DERIVED_TYPES = {
    "MeetingRequest": "#microsoft.graph.eventMessageRequest",
    "MeetingResponse": "#microsoft.graph.eventMessageResponse",
    "MeetingCancellation": "#microsoft.graph.eventMessage",
}
MESSAGE_TYPE = "#microsoft.graph.message"


@dataclass(frozen=True)
class Shape:
    """How a request wants messages rendered."""

    immutable_ids: bool = False
    select: frozenset[str] | None = None  # canonical property names; None: the default set
    body_type: str | None = None  # "text" | "html" from Prefer; None: as stored
    annotate_type: bool = False  # "@odata.type" on plain messages too (delta, move, copy)


def format_datetime(value: datetime | None) -> str | None:
    """Graph's ``Edm.DateTimeOffset`` as the docs show it: UTC, whole seconds, ``Z``."""
    return None if value is None else value.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_select(value: str | None) -> frozenset[str] | None:
    """``$select=subject,isRead`` as canonical names; a 400 naming an unknown property."""
    if value is None:
        return None
    names: set[str] = set()
    for raw in value.split(","):
        token = raw.strip()
        if not token:
            continue
        name = _BY_LOWER.get(token.lower())
        if name is None:
            raise GraphError(
                400,
                "RequestBroker--ParseUri",
                f"Could not find a property named '{token}' on type 'microsoft.graph.message'.",
            )
        names.add(name)
    return frozenset(names)


_PREFER_BODY = re.compile(r'outlook\.body-content-type\s*=\s*"?(text|html)"?', re.IGNORECASE)


def body_preference(headers: Mapping[str, str]) -> str | None:
    """``Prefer: outlook.body-content-type="text"`` (or ``"html"``): the asked type, or None."""
    found = _PREFER_BODY.search(headers.get("prefer", ""))
    return found.group(1).lower() if found else None


def preference_applied(body_type: str) -> dict[str, str]:
    return {"Preference-Applied": f'outlook.body-content-type="{body_type}"'}


def recipient(address: Address | None) -> dict[str, Any] | None:
    if address is None:
        return None
    return {
        "emailAddress": {
            "name": address.name or address.email or None,
            "address": address.email or None,
        }
    }


def _recipients(addresses: Iterable[Address]) -> list[dict[str, Any]]:
    return [r for r in (recipient(a) for a in addresses) if r is not None]


class _TextExtractor(HTMLParser):
    """The text of an HTML body, without markup, scripts and styles."""

    _SKIPPED = frozenset({"script", "style", "head", "title"})
    _BREAKS = frozenset({"br", "p", "div", "tr", "li", "h1", "h2", "h3", "h4", "table"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skipping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._SKIPPED:
            self._skipping += 1
        elif tag in self._BREAKS:
            self.parts.append("\r\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIPPED and self._skipping:
            self._skipping -= 1

    def handle_data(self, data: str) -> None:
        if not self._skipping:
            self.parts.append(data)


def html_to_text(markup: str) -> str:
    parser = _TextExtractor()
    parser.feed(markup)
    parser.close()
    text = "".join(parser.parts)
    return re.sub(r"(\r\n\s*){3,}", "\r\n\r\n", text).strip()


def _text_to_html(text: str) -> str:
    escaped = html.escape(text).replace("\r\n", "\n").replace("\n", "<br>\r\n")
    return (
        '<html><head>\r\n<meta http-equiv="Content-Type" content="text/html; charset=utf-8">'
        f"\r\n</head>\r\n<body>\r\n<div>{escaped}</div>\r\n</body>\r\n</html>\r\n"
    )


def _body(item: Item, body_type: str | None) -> dict[str, Any]:
    stored = "html" if item.html_body is not None else "text"
    wanted = body_type or stored
    if wanted == "html":
        content = (
            item.html_body if item.html_body is not None else _text_to_html(item.text_body or "")
        )
    else:
        content = (
            item.text_body if item.text_body is not None else html_to_text(item.html_body or "")
        )
    return {"contentType": wanted, "content": content}


def _preview(item: Item) -> str:
    text = item.text_body if item.text_body is not None else html_to_text(item.html_body or "")
    return text.strip()[:_PREVIEW_LENGTH]


def _time_zone(value: datetime | None) -> dict[str, Any] | None:
    if value is None:
        return None
    # dateTimeTimeZone as Outlook writes it: seven fractional digits, the zone apart.
    return {"dateTime": value.strftime("%Y-%m-%dT%H:%M:%S.%f") + "0", "timeZone": "UTC"}


def _flag(flag: Flag) -> dict[str, Any]:
    rendered: dict[str, Any] = {"flagStatus": _FLAG_STATUS.get(flag.status, "notFlagged")}
    for name, value in (
        ("startDateTime", flag.start),
        ("dueDateTime", flag.due),
        ("completedDateTime", flag.complete),
    ):
        if value is not None:
            rendered[name] = _time_zone(value)
    return rendered


def conversation_id(item: Item) -> str:
    """A stable id per conversation topic (the store keeps no conversation records)."""
    topic = re.sub(
        r"^((re|fw|fwd|aw|wg)\s*:\s*)+", "", item.conversation_topic or item.subject, flags=re.I
    )
    digest = hashlib.sha256(topic.strip().lower().encode()).digest()[:16]
    return base64.urlsafe_b64encode(b"AAQk" + digest).decode()


def web_link(item: Item) -> str:
    return (
        "https://outlook.office365.com/owa/?ItemID="
        f"{quote(item.item_id, safe='')}&exvsurl=1&viewmodel=ReadMessageItem"
    )


def odata_type(item: Item) -> str:
    return _DERIVED_TYPES.get(item.element, MESSAGE_TYPE)


def message_json(item: Item, shape: Shape) -> dict[str, Any]:
    """``item`` as a Graph message (an embedded item when it has no folder)."""
    embedded = item.folder is None
    out: dict[str, Any] = {}
    kind = odata_type(item)
    if shape.annotate_type or embedded or kind != MESSAGE_TYPE:
        out["@odata.type"] = kind
    if not embedded:
        out["@odata.etag"] = f'W/"{item.change_key}"'
    out["id"] = "" if embedded else item_id(item, immutable=shape.immutable_ids)
    wanted = shape.select if shape.select is not None else frozenset(DEFAULT_PROPERTIES)
    if embedded:
        wanted = wanted & _EMBEDDED
    for name in (*DEFAULT_PROPERTIES, "internetMessageHeaders", "uniqueBody"):
        if name in wanted:
            out[name] = _PROPERTIES[name](item, shape)
    return out


def _importance(item: Item) -> str:
    lowered = item.importance.lower()
    return lowered if lowered in ("low", "high") else "normal"


#: How each property is read from an item (``shape`` for the body's content type).
_PROPERTIES: dict[str, Callable[[Item, Shape], Any]] = {
    "createdDateTime": lambda i, _: format_datetime(i.created_at),
    "lastModifiedDateTime": lambda i, _: format_datetime(i.modified_at),
    "changeKey": lambda i, _: i.change_key,
    "categories": lambda i, _: list(i.categories),
    "receivedDateTime": lambda i, _: format_datetime(i.received_at),
    "sentDateTime": lambda i, _: format_datetime(i.sent_at),
    "hasAttachments": lambda i, _: i.has_attachments,
    "internetMessageId": lambda i, _: i.internet_message_id,
    "subject": lambda i, _: i.subject,
    "bodyPreview": lambda i, _: _preview(i),
    "importance": lambda i, _: _importance(i),
    "parentFolderId": lambda i, _: folder_id(i.folder) if i.folder is not None else None,
    "conversationId": lambda i, _: conversation_id(i),
    "isDeliveryReceiptRequested": lambda i, _: i.delivery_receipt_requested,
    "isReadReceiptRequested": lambda i, _: i.read_receipt_requested,
    "isRead": lambda i, _: i.is_read,
    "isDraft": lambda i, _: i.is_draft,
    "webLink": lambda i, _: web_link(i),
    # The store has no Focused Inbox; everything is where Outlook puts mail by default.
    "inferenceClassification": lambda i, _: i.inference_classification,
    "body": lambda i, shape: _body(i, shape.body_type),
    "sender": lambda i, _: recipient(i.sender or i.from_),
    "from": lambda i, _: recipient(i.from_),
    "toRecipients": lambda i, _: _recipients(i.to),
    "ccRecipients": lambda i, _: _recipients(i.cc),
    "bccRecipients": lambda i, _: _recipients(i.bcc),
    "replyTo": lambda i, _: _recipients(i.reply_to),
    "flag": lambda i, _: _flag(i.flag),
    "internetMessageHeaders": lambda i, _: [{"name": n, "value": v} for n, v in i.headers],
    # The store keeps no quoted-reply split: the unique body is the body.
    "uniqueBody": lambda i, shape: _body(i, shape.body_type),
}


FILE_ATTACHMENT = "#microsoft.graph.fileAttachment"
ITEM_ATTACHMENT = "#microsoft.graph.itemAttachment"
REFERENCE_ATTACHMENT = "#microsoft.graph.referenceAttachment"


def attachment_type(attachment: Attachment) -> str:
    if attachment.source_url is not None:
        return REFERENCE_ATTACHMENT
    return ITEM_ATTACHMENT if attachment.item is not None else FILE_ATTACHMENT


def attachment_json(
    attachment: Attachment,
    *,
    expand_item: bool = False,
    select: frozenset[str] | None = None,
    context: str | None = None,
) -> dict[str, Any]:
    """A fileAttachment (``attachment-get-file``) or an itemAttachment (``attachment-get-item``),
    its ``item`` with ``$expand=microsoft.graph.itemattachment/item`` (``…-item-expand``), or a
    referenceAttachment (``attachment-get-reference``): the base attachment properties only, as
    v1.0 types it (``sourceUrl``, ``providerType`` … are beta's)."""
    out: dict[str, Any] = {
        "@odata.type": attachment_type(attachment),
        "id": to_rest_id(attachment.attachment_id),
        "lastModifiedDateTime": format_datetime(attachment.last_modified),
        "name": attachment.name,
        # Graph gives an item attachment no content type (the docs' example: null).
        "contentType": None if attachment.item is not None else attachment.content_type,
        "size": attachment.size,
        "isInline": attachment.is_inline,
    }
    if attachment.item is None and attachment.source_url is None:
        out["contentId"] = attachment.content_id
        out["contentLocation"] = None
        out["contentBytes"] = base64.b64encode(attachment.content or b"").decode()
    elif expand_item and attachment.item is not None:
        if context is not None:
            out["item@odata.context"] = context
        out["item"] = message_json(attachment.item, Shape())
    if select is not None:
        out = {k: v for k, v in out.items() if k in _ANNOTATIONS or k in select or k == "item"}
    return out


ATTACHMENT_PROPERTIES = (
    "id",
    "lastModifiedDateTime",
    "name",
    "contentType",
    "size",
    "isInline",
    "contentId",
    "contentLocation",
    "contentBytes",
)
