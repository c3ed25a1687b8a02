"""The event handlers receive: frozen, library-independent and JSON-serialisable.

A ``Message`` says everything a workflow usually needs without another request to Exchange. The
heavy parts (the MIME source and attachment content) are loaded only when a handler asks, through
a :class:`ContentLoader` the mail source attaches; the loader is not part of the value, its JSON,
its equality or its hash, and nothing loaded is cached on the value (a handler that needs the
bytes twice keeps them itself).

Content streams: ``Message.open_mime()`` and ``Attachment.open()`` return a readable binary file
the caller closes, spooled to disk by the source past a threshold (the EWS source keeps at most
1 MiB of it in memory), so a handler that copies it costs bounded memory whatever the size.
``mime()`` and ``content()`` read the whole stream into ``bytes``: simple, and as large as the
content (benchmarks/README.md, "Memory", has the figures).

Times are timezone-aware UTC and serialise as ISO 8601 with a ``Z`` suffix; a naive datetime is
taken to be UTC already.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
from datetime import UTC, datetime
from typing import IO, Annotated, Any, Literal, Protocol

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PrivateAttr,
    WithJsonSchema,
    model_validator,
)

__all__ = [
    "Address",
    "Attachment",
    "BytesContentLoader",
    "ContentLoader",
    "Importance",
    "Message",
    "UtcDatetime",
    "disambiguated_key",
    "idempotency_key",
    "legacy_idempotency_key",
    "message_fingerprint",
    "message_id_key",
    "message_json_schema",
]

Importance = Literal["low", "normal", "high"]

SCHEMA_ID = "urn:ews-listener:event:message"


def _to_utc(value: datetime) -> datetime:
    # A naive value comes from code that already works in UTC (exchangelib's EWSDateTime is
    # always aware); converting it from local time would shift it by the host's offset.
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _iso_z(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


UtcDatetime = Annotated[
    datetime,
    AfterValidator(_to_utc),
    PlainSerializer(_iso_z, return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "format": "date-time", "pattern": "Z$"}),
]
"""A timezone-aware UTC datetime that serialises as ISO 8601 with ``Z``."""


class ContentLoader(Protocol):
    """Fetches the heavy parts of a message on demand (implemented by each mail source).

    Each method returns a new readable binary file positioned at its start; the caller closes
    it. A source should not hold the whole content in memory (spool it to disk past a threshold).
    """

    def open_mime(self, message: Message) -> IO[bytes]:
        """The full RFC 5322 source of the message."""
        ...

    def open_attachment(self, message: Message, attachment: Attachment) -> IO[bytes]:
        """The content of one attachment; item attachments come back as RFC 5322 (.eml)."""
        ...


class BytesContentLoader(Protocol):
    """The first form of :class:`ContentLoader`, returning ``bytes``; ``bind`` still takes it."""

    def load_mime(self, message: Message) -> bytes: ...

    def load_attachment(self, message: Message, attachment: Attachment) -> bytes: ...


class _FromBytes:
    """A :class:`ContentLoader` over a :class:`BytesContentLoader` (the bytes are in memory)."""

    def __init__(self, loader: BytesContentLoader) -> None:
        self._loader = loader

    def open_mime(self, message: Message) -> IO[bytes]:
        return io.BytesIO(self._loader.load_mime(message))

    def open_attachment(self, message: Message, attachment: Attachment) -> IO[bytes]:
        return io.BytesIO(self._loader.load_attachment(message, attachment))


class _Value(BaseModel):
    """A frozen value whose private attributes (loader, back-references) are not part of it."""

    # Serialisation always writes every field: the event schema says so (``required``).
    model_config = ConfigDict(
        frozen=True, extra="forbid", json_schema_serialization_defaults_required=True
    )

    def __eq__(self, other: object) -> bool:
        # pydantic compares private attributes too: a bound and an unbound copy of the same
        # message would differ, and Attachment._message -> Message -> attachments would recurse.
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, BaseModel)
        return self.__dict__ == other.__dict__

    def __hash__(self) -> int:
        return hash((type(self), *self.__dict__.values()))


class Address(_Value):
    """A mailbox address with its display name."""

    email: str = Field(description="SMTP address, as Exchange reports it.")
    name: str | None = Field(default=None, description="Display name, if any.")

    def __str__(self) -> str:
        return f"{self.name} <{self.email}>" if self.name else self.email


class Attachment(_Value):
    """Metadata of one attachment; ``open()`` streams the content, ``content()`` loads it whole."""

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

    @model_validator(mode="before")
    @classmethod
    def _drop_inline_content(cls, data: Any) -> Any:
        # ``Message.to_json(attachments_inline_max=…)`` adds ``content_base64``; reading such an
        # event back (a webhook receiver using this model) must work, but the value never keeps
        # content: it is loaded on demand.
        if isinstance(data, dict) and "content_base64" in data:
            data = {k: v for k, v in data.items() if k != "content_base64"}
        return data

    def open(self) -> IO[bytes]:
        """The content as a readable binary file (close it; ``with attachment.open() as f:``).

        An attached item comes back as RFC 5322. Fetched from the mail source on each call.
        """
        message = self._message
        if message is None or message._loader is None:
            raise RuntimeError(f"attachment {self.name!r} is not bound to a mail source")
        return message._loader.open_attachment(message, self)

    def content(self) -> bytes:
        """The attachment's bytes, all in memory (prefer :meth:`open` for large files)."""
        with self.open() as f:
            return f.read()


class Message(_Value):
    """One message in one watched folder: the event every handler receives."""

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        populate_by_name=True,
        json_schema_serialization_defaults_required=True,
        title="Message",
        json_schema_extra={"$id": SCHEMA_ID},
    )

    mailbox: str = Field(description="SMTP address of the watched mailbox.")
    folder: str = Field(description="The watched folder, as configured (e.g. 'inbox').")
    item_id: str = Field(
        description=(
            "The mail source's id of the item, opaque (EWS: changes when the item moves;"
            " Microsoft Graph: an immutable id)."
        )
    )
    source: str = Field(default="ews", description="The protocol it was read with: ews, graph.")
    item_class: str | None = Field(
        default=None, description="Exchange item class (e.g. IPM.Note) when the source says."
    )
    internet_message_id: str | None = None
    conversation_id: str | None = None
    subject: str = ""
    sender: Address | None = None
    from_: Address | None = Field(default=None, alias="from")
    reply_to: tuple[Address, ...] = ()
    to: tuple[Address, ...] = ()
    cc: tuple[Address, ...] = ()
    bcc: tuple[Address, ...] = ()
    received_at: UtcDatetime | None = Field(default=None, description="UTC, ISO 8601 with Z.")
    sent_at: UtcDatetime | None = Field(default=None, description="UTC, ISO 8601 with Z.")
    importance: Importance = "normal"
    categories: tuple[str, ...] = ()
    is_read: bool = False
    has_attachments: bool = False
    headers: tuple[tuple[str, str], ...] = Field(
        default=(), description="Internet headers in order, as [name, value] pairs."
    )
    text_body: str | None = None
    html_body: str | None = None
    attachments: tuple[Attachment, ...] = ()
    idempotency_key: str = Field(
        default="",
        description=(
            "Stable key of this message in its mailbox: sha256 of the mailbox address and the"
            " Internet Message-ID (the same after moves, retries, replays, resyncs and a switch"
            " of protocol)."
        ),
    )

    _loader: ContentLoader | None = PrivateAttr(default=None)

    def model_post_init(self, context: Any, /) -> None:
        """Fill in the idempotency key and point each attachment back at this message."""
        if not self.idempotency_key:
            object.__setattr__(self, "idempotency_key", idempotency_key(self))
        # An Attachment instance passed to two messages must not load through the wrong one:
        # give each message its own (cheap, metadata-only) copies when one is already owned.
        if any(a._message is not None and a._message is not self for a in self.attachments):
            object.__setattr__(self, "attachments", tuple(a.model_copy() for a in self.attachments))
        for attachment in self.attachments:
            attachment._message = self

    def bind(self, loader: ContentLoader | BytesContentLoader) -> Message:
        """Attach the loader that serves ``mime()`` and attachment content; returns self."""
        if not hasattr(loader, "open_mime"):
            loader = _FromBytes(loader)
        self._loader = loader  # type: ignore[assignment]
        return self

    @property
    def bound(self) -> bool:
        """Whether ``mime()`` and attachment content can be loaded."""
        return self._loader is not None

    def open_mime(self) -> IO[bytes]:
        """The full RFC 5322 source as a readable binary file, fetched from the mail source on
        each call (close it; ``with message.open_mime() as f:``)."""
        if self._loader is None:
            raise RuntimeError("this message is not bound to a mail source")
        return self._loader.open_mime(self)

    def mime(self) -> bytes:
        """The full RFC 5322 source, all in memory (not cached; prefer :meth:`open_mime`)."""
        with self.open_mime() as f:
            return f.read()

    def header(self, name: str) -> str | None:
        """The first header called ``name`` (case-insensitive), or None."""
        wanted = name.lower()
        return next((v for k, v in self.headers if k.lower() == wanted), None)

    def header_values(self, name: str) -> tuple[str, ...]:
        """Every header called ``name`` (case-insensitive), in order."""
        wanted = name.lower()
        return tuple(v for k, v in self.headers if k.lower() == wanted)

    def to_dict(self, *, attachments_inline_max: int = 0) -> dict[str, Any]:
        """The event as JSON-ready data (see :meth:`to_json`)."""
        data = self.model_dump(mode="json", by_alias=True)
        if attachments_inline_max > 0:
            for out, attachment in zip(data["attachments"], self.attachments, strict=True):
                # An unknown size is not inlined: loading it to find out could pull a huge file.
                if attachment.size is not None and attachment.size <= attachments_inline_max:
                    with attachment.open() as f:
                        # Read one byte past the limit: a size the server under-reported must
                        # not bring a large file into memory (and is then not inlined).
                        content = f.read(attachments_inline_max + 1)
                    if len(content) <= attachments_inline_max:
                        out["content_base64"] = base64.b64encode(content).decode()
        return data

    def to_json(self, *, attachments_inline_max: int = 0) -> str:
        """The event as compact JSON; attachments up to ``attachments_inline_max`` bytes (by their
        reported size) carry their content as ``content_base64``."""
        data = self.to_dict(attachments_inline_max=attachments_inline_max)
        return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def idempotency_key(message: Message) -> str:
    """The key of ``message`` in its mailbox: what a receiver that honours keys acts on once.

    The rule (README, "Delivery contract"): sha256 over the mailbox's SMTP address (lower case)
    and the Internet Message-ID as the message carries it (surrounding white space removed). It
    holds no folder, item id, change key or protocol, so a move, a retry, a replay, a resync and
    a switch of the mailbox from EWS to Microsoft Graph keep it. Without a Message-ID (items made
    in the mailbox itself rather than received: drafts, some posts and calendar items) the basis is
    what a move keeps: received and sent time, sender and subject. Two different messages that
    share a Message-ID are told apart by the poller with :func:`message_fingerprint`.
    """
    if (message.internet_message_id or "").strip():
        return message_id_key(message.mailbox, message.internet_message_id or "")
    basis = "\x1f".join(
        (
            "nomid",
            _to_second(message.received_at),
            _to_second(message.sent_at),
            _sender_email(message),
            message.subject,
        )
    )
    return _sha256(message.mailbox, basis)


def message_id_key(mailbox: str, internet_message_id: str) -> str:
    """:func:`idempotency_key` of a message of ``mailbox`` that carries ``internet_message_id``."""
    return _sha256(mailbox, f"mid:{internet_message_id.strip()}")


def _sha256(mailbox: str, basis: str) -> str:
    return hashlib.sha256(f"{mailbox.strip().lower()}\x1f{basis}".encode()).hexdigest()


def message_fingerprint(message: Message) -> str:
    """Who sent ``message``, when, and its subject: the same in EWS and Graph, kept by a move.

    Stored beside each ledger entry; a message whose key is in the ledger under another
    fingerprint is a different message that reuses a Message-ID (broken mailers do, even with
    the same sender and Date), and the poller gives it a key of its own
    (:func:`disambiguated_key`) instead of skipping it. When in doubt this errs towards handing a
    message over again (a person who edits a subject, then moves the item), never towards
    skipping one.
    """
    raw = "\x1f".join((_to_second(message.sent_at), _sender_email(message), message.subject))
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def disambiguated_key(key: str, fingerprint: str) -> str:
    """The key of a message whose Message-ID another message of its mailbox already carries."""
    return hashlib.sha256(f"{key}\x1f{fingerprint}".encode()).hexdigest()


def legacy_idempotency_key(mailbox: str, item_id: str, internet_message_id: str | None) -> str:
    """The key before store schema 3 (it hashed the EWS item id, so a move changed it).

    Kept only to recognise what was handed over before an upgrade; see ``Poller``.
    """
    raw = "\x1f".join((mailbox.lower(), item_id, internet_message_id or ""))
    return hashlib.sha256(raw.encode()).hexdigest()


def _to_second(value: datetime | None) -> str:
    # Whole seconds: what both EWS and Graph report, whatever precision a store keeps.
    return _iso_z(value.replace(microsecond=0)) if value else ""


def _sender_email(message: Message) -> str:
    who = message.from_ or message.sender
    return (who.email or "").lower() if who else ""


def message_json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the event as handlers and webhooks receive it."""
    schema = Message.model_json_schema(by_alias=True, mode="serialization")
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}
    attachment = schema["$defs"]["Attachment"]
    attachment["properties"]["content_base64"] = {
        "type": "string",
        "contentEncoding": "base64",
        "title": "Content Base64",
        "description": "The content, only when the webhook inlines attachments up to a size.",
    }
    return schema
