"""GetAttachment: file attachments with their content, item attachments with their item.

A 10 MB attachment is about 13.4 MB of base64 in one response; it is built in memory like any
other response (Exchange Online's own limit for EWS messages is larger).
"""

from __future__ import annotations

from lxml import etree

from ews_listener_emulators.ops import OpContext, OpResult, Reply, operation, response, success
from ews_listener_emulators.ops._render import attachment_element
from ews_listener_emulators.soap import error_message, m, sub

__all__ = ["get_attachment"]


@operation("GetAttachment")
def get_attachment(ctx: OpContext, request: etree._Element) -> OpResult:
    """Each requested attachment with its content, or ``ErrorAttachmentNotFound``… as Exchange."""
    assert ctx.mailbox is not None
    ids = request.find(m("AttachmentIds"))
    messages: list[etree._Element] = []
    for reference in ids if ids is not None else ():
        with ctx.store.lock:
            attachment = ctx.store.attachment(ctx.mailbox, reference.get("Id") or "")
            rendered = (
                attachment_element(attachment, content=True, owner=ctx.mailbox)
                if attachment is not None
                else None
            )
        if rendered is None:
            messages.append(
                error_message(
                    "GetAttachmentResponseMessage",
                    "ErrorInvalidIdMalformed",
                    "Id is malformed.",
                    container="Attachments",
                )
            )
            continue
        message = success("GetAttachmentResponseMessage")
        sub(message, m("Attachments")).append(rendered)
        messages.append(message)
    return Reply(response("GetAttachment", messages))
