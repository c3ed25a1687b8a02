"""The event handlers receive: frozen, library-independent and JSON-serialisable.

A ``Message`` says everything a workflow usually needs without another request to Exchange. The
heavy parts (the MIME source and attachment content) are loaded only when a handler asks, through
a :class:`ContentLoader` the mail source attaches; the loader is not part of the value, its JSON or
its equality.
"""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import datetime
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_serializer

__all__ = [
    "Address",
    "Attachment",
    "ContentLoader",
    "Importance",
    "Message",
    "idempotency_key",
]

Importance = Literal["low", "normal", "high"]


class ContentLoader(Protocol):
    """Fetches the heavy parts of a message on demand (implemented by each mail source)."""

    def load_mime(self, message: Message) -> bytes:
        """The full RFC 5322 source of the message."""
        ...

    def load_attachment(self, message: Message, attachment: Attachment) -> bytes:
        """The content of one attachment; item attachments come back as RFC 5322 (.eml)."""
        ...


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Address(_Frozen):
    """A mailbox address with its display name."""

    email: str = Field(description="SMTP address, as Exchange reports it.")
    name: str | None = Field(default=None, description="Display name, if any.")

    def __str__(self) -> str:
        return f"{self.name} <{self.email}>" if self.name else self.email


class Attachment(_Frozen):
    """Metadata of one attachment; ``content()`` loads the bytes."""

    attachment_id: str = Field(description="Opaque id of the attachment in the mail source.")
    name: str = Field(description="File name as sent; never trust it as a path.")
    content_type: str = Field(default="application/octet-stream")
    size: int | None = Field(default=None, description="Size in bytes, when the server says.")
    content_id: str | None = Field(default=None, description="Content-ID, for inline parts.")
    is_inline: bool = False
    kind: Literal["file", "item"] = Field(
        default="file", description="'item' is an attached message, delivered as .eml."
    )

    _message: Message | None = PrivateAttr(default=None)
    _loader: ContentLoader | None = PrivateAttr(default=None)

    def content(self) -> bytes:
        """The attachment's bytes (an attached item comes back as RFC 5322)."""
        if self._loader is None or self._message is None:
            raise RuntimeError("this attachment is not bound to a mail source")
        return self._loader.load_attachment(self._message, self)


class Message(_Frozen):
    """One message in one watched folder: the event every handler receives."""

    mailbox: str = Field(description="SMTP address of the watched mailbox.")
    folder: str = Field(description="The watched folder, as configured (e.g. 'inbox').")
    item_id: str = Field(description="EWS item id (changes when the item moves).")
    change_key: str | None = None
    item_class: str = Field(default="IPM.Note", description="Exchange item class.")
    internet_message_id: str | None = None
    conversation_id: str | None = None
    subject: str = ""
    sender: Address | None = None
    from_: Address | None = Field(default=None, alias="from")
    reply_to: tuple[Address, ...] = ()
    to: tuple[Address, ...] = ()
    cc: tuple[Address, ...] = ()
    bcc: tuple[Address, ...] = ()
    received_at: datetime | None = Field(default=None, description="UTC, ISO 8601.")
    sent_at: datetime | None = Field(default=None, description="UTC, ISO 8601.")
    importance: Importance = "normal"
    categories: tuple[str, ...] = ()
    is_read: bool = False
    has_attachments: bool = False
    headers: tuple[tuple[str, str], ...] = Field(
        default=(), description="Internet headers in order, as (name, value) pairs."
    )
    text_body: str | None = None
    html_body: str | None = None
    attachments: tuple[Attachment, ...] = ()
    idempotency_key: str = Field(
        default="",
        description="Stable key of this hand-over: sha256 of mailbox, item id and Message-ID.",
    )

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    _loader: ContentLoader | None = PrivateAttr(default=None)

    def model_post_init(self, context: Any, /) -> None:
        if not self.idempotency_key:
            key = idempotency_key(self.mailbox, self.item_id, self.internet_message_id)
            object.__setattr__(self, "idempotency_key", key)
        for attachment in self.attachments:
            attachment._message = self

    @field_serializer("received_at", "sent_at")
    def _utc(self, value: datetime | None) -> str | None:
        return None if value is None else value.isoformat().replace("+00:00", "Z")

    def bind(self, loader: ContentLoader) -> Message:
        """Attach the loader that serves ``mime()`` and attachment content; returns self."""
        self._loader = loader
        for attachment in self.attachments:
            attachment._loader = loader
        return self

    def mime(self) -> bytes:
        """The full RFC 5322 source, fetched from the mail source on first use."""
        if self._loader is None:
            raise RuntimeError("this message is not bound to a mail source")
        return self._loader.load_mime(self)

    def header(self, name: str) -> str | None:
        """The first header called ``name`` (case-insensitive), or None."""
        wanted = name.lower()
        return next((v for k, v in self.headers if k.lower() == wanted), None)

    def to_json(self, *, attachments_inline_max: int = 0) -> str:
        """The event as JSON; attachments up to ``attachments_inline_max`` bytes carry base64."""
        data = self.model_dump(mode="json", by_alias=True)
        if attachments_inline_max > 0:
            for out, attachment in zip(data["attachments"], self.attachments, strict=True):
                if attachment.size is not None and attachment.size <= attachments_inline_max:
                    out["content_base64"] = base64.b64encode(attachment.content()).decode()
        return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def idempotency_key(mailbox: str, item_id: str, internet_message_id: str | None) -> str:
    """sha256 over mailbox, EWS item id and Internet Message-ID: stable across retries and restarts.

    The same message handed over again (after a crash) carries the same key, so a handler that
    remembers keys does its work once.
    """
    raw = "\x1f".join((mailbox.lower(), item_id, internet_message_id or ""))
    return hashlib.sha256(raw.encode()).hexdigest()
