"""Stream one base64 element of an EWS answer (MIME, attachment content) into a spooled file.

exchangelib 5.6.0 parses an ordinary answer whole: ``GetItem`` with ``MimeContent`` keeps the
response body, the lxml tree holding the base64 text, and the decoded bytes at the same time
(then ``bytes(...)`` made a fourth copy). A 30 MiB attachment is ~41 MB of base64 inside the MIME
and ~55 MB of base64 in the XML: ``ews-listener once`` peaked at 313 MB RSS (issue 11, point 10).

exchangelib has one streaming path, ``GetAttachment.stream_file_content()`` (what
``FileAttachment.fp`` uses): a SAX parser over the raw HTTP stream that yields the decoded
content of ``t:Content`` 64 KiB at a time. :class:`_StreamsOneElement` generalises it to any
element and service, so ``GetItem``'s ``t:MimeContent`` and an item attachment's ``t:MimeContent``
stream the same way. The caller writes the pieces to a ``SpooledTemporaryFile``: memory holds at
most ``SPOOL_MAX_MEMORY`` of content plus a few parser buffers, whatever the message's size.

Two exchangelib habits handled here:

- The SAX parser decodes base64 in groups of four *characters*, counting any whitespace Exchange
  or a proxy folded into the text; the whitespace is dropped before counting.
- An answer without the element (an error, or a zero-byte attachment whose ``t:Content`` is
  absent) raises ``ElementNotFound`` carrying the bytes read so far; like
  ``stream_file_content()`` we parse those normally to raise the server's own error, else re-raise.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from exchangelib.attachments import AttachmentId
from exchangelib.fields import FieldPath
from exchangelib.items import ID_ONLY, Message
from exchangelib.services import GetAttachment, GetItem
from exchangelib.util import (
    TNS,
    DummyResponse,
    ElementNotFound,
    StreamingBase64Parser,
    StreamingContentHandler,
)

from listener.sources._spool import SPOOL_MAX_MEMORY, spool  # moved; kept importable here

__all__ = [
    "SPOOL_MAX_MEMORY",
    "AttachmentStream",
    "ElementNotFound",
    "MimeStream",
    "spool",
]

_NO_WHITESPACE = str.maketrans("", "", " \t\r\n")


class _Base64Parser(StreamingBase64Parser):  # type: ignore[misc]
    buffer: list[str] | None

    def _decode_buffer(self) -> Iterator[bytes]:
        if self.buffer:
            self.buffer = ["".join(self.buffer).translate(_NO_WHITESPACE)]
        result: Iterator[bytes] = super()._decode_buffer()
        return result


class _StreamsOneElement:
    """Mixin for an exchangelib service: ``stream(payload)`` yields one element's decoded bytes."""

    element: str  # local name in the types namespace, e.g. "MimeContent"
    streaming: bool

    def _update_api_version(self, api_version: Any, header: Any) -> None:
        # The SAX parser never sees the SOAP header as a tree (exchangelib skips it too).
        if not self.streaming:
            super()._update_api_version(api_version, header)  # type: ignore[misc]

    def _get_soap_parts(self, response: Any) -> Any:
        if not self.streaming:
            return super()._get_soap_parts(response)  # type: ignore[misc]
        return None, response  # the raw response, for the SAX parser below

    def _get_soap_messages(self, body: Any) -> Any:
        if not self.streaming:
            return super()._get_soap_messages(body)  # type: ignore[misc]
        parser = _Base64Parser()
        parser.setContentHandler(
            StreamingContentHandler(parser=parser, ns=TNS, element_name=self.element)
        )
        return parser.parse(body)

    def stream(self, payload: Any) -> Iterator[bytes]:
        service: Any = self
        self.streaming = True
        try:
            yield from service._get_response_xml(payload=payload)
        except ElementNotFound as missing:
            self._stop()  # the answer was read to its end: give the session back first
            _, body = self._get_soap_parts(DummyResponse(content=missing.data))
            for element in service._get_elements_in_response(
                response=self._get_soap_messages(body)
            ):
                if isinstance(element, Exception):
                    raise element from None
            raise
        finally:
            # Also when the consumer stops early (GeneratorExit): the session goes back to the pool.
            self._stop()

    def _stop(self) -> None:
        if self.streaming:
            service: Any = self
            service.stop_streaming()
        self.streaming = False


class MimeStream(_StreamsOneElement, GetItem):  # type: ignore[misc]
    """``GetItem`` of one item's ``MimeContent``, streamed."""

    element = "MimeContent"

    def mime(self, item_id: str) -> Iterator[bytes]:
        field = Message.get_field_by_fieldname("mime_content")
        payload = self.get_payload(
            items=[(item_id, None)], additional_fields=[FieldPath(field=field)], shape=ID_ONLY
        )
        return self.stream(payload)


class AttachmentStream(_StreamsOneElement, GetAttachment):  # type: ignore[misc]
    """``GetAttachment`` of one attachment: a file's ``Content`` or an item's ``MimeContent``."""

    element = "Content"

    def content(self, attachment_id: str, *, item: bool) -> Iterator[bytes]:
        self.element = "MimeContent" if item else "Content"
        payload = self.get_payload(
            items=[AttachmentId(id=attachment_id)],
            include_mime_content=item,
            body_type=None,
            filter_html_content=None,
            additional_fields=None,
        )
        return self.stream(payload)
