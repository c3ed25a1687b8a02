"""ConvertId (exchangelib's version guess) and the answer to operations we do not implement.

exchangelib guesses the server version by sending ``ConvertId`` for the id ``DUMMY`` in the mailbox
``DUMMY`` and reading ``ServerVersionInfo`` from the header; real Exchange answers the request
itself with ``ErrorInvalidSmtpAddress`` (ews-samples/from-clients/…ConvertId-error.xml), which
exchangelib expects and ignores. Operations the emulator does not implement are answered by the
server (``_ews_http.EwsHandler._admit``) with the ``ErrorInvalidRequest`` fault.
"""

from __future__ import annotations

import base64

from lxml import etree

from ews_listener_emulators.ops import OpContext, OpResult, Reply, operation, response, success
from ews_listener_emulators.soap import error_message, m, sub

__all__ = ["convert_id"]

_FORMATS = ("EwsId", "EwsLegacyId", "EntryId", "HexEntryId", "StoreId", "OwaId")


@operation("ConvertId")
def convert_id(ctx: OpContext, request: etree._Element) -> OpResult:
    """Convert ids between formats (EwsId, EntryId: base64; HexEntryId: hex of the same bytes)."""
    destination = request.get("DestinationFormat") or "EwsId"
    ids = request.find(m("SourceIds"))
    messages: list[etree._Element] = []
    for source in ids if ids is not None else ():
        mailbox = source.get("Mailbox") or ""
        if "@" not in mailbox or ctx.store.mailbox(mailbox) is None:
            messages.append(
                error_message(
                    "ConvertIdResponseMessage",
                    "ErrorInvalidSmtpAddress",
                    "The SMTP address format is invalid.",
                )
            )
            continue
        value = source.get("Id") or ""
        raw = _decode(value, source.get("Format") or "EwsId")
        if raw is None:
            messages.append(
                error_message(
                    "ConvertIdResponseMessage", "ErrorInvalidIdMalformed", "Id is malformed."
                )
            )
            continue
        message = success("ConvertIdResponseMessage")
        sub(
            message,
            m("AlternateId"),
            attrib={
                "{http://www.w3.org/2001/XMLSchema-instance}type": "t:AlternateIdType",
                "Format": destination,
                "Id": _encode(raw, destination),
                "Mailbox": mailbox,
            },
        )
        messages.append(message)
    return Reply(response("ConvertId", messages))


def _decode(value: str, fmt: str) -> bytes | None:
    try:
        if fmt == "HexEntryId":
            return bytes.fromhex(value)
        return base64.b64decode(value, validate=True)
    except ValueError:
        return None


def _encode(raw: bytes, fmt: str) -> str:
    if fmt == "HexEntryId":
        return raw.hex().upper()
    return base64.b64encode(raw).decode("ascii")
