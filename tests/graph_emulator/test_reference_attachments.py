"""Reference attachments (a link to a file in OneDrive or SharePoint) over HTTPS, as
../shared/graph-samples/attachment-get-reference.http.txt documents them: shaped as a
``#microsoft.graph.referenceAttachment``, and their ``$value`` refused with 405 (attachment-get.md:
"attempting to get the $value of a reference attachment returns HTTP 405")."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from email.message import EmailMessage

import pytest

from ews_listener_emulators.graph._ids import to_rest_id
from ews_listener_emulators.graph.server import GraphEmulator
from ews_listener_emulators.store import Attachment, Item
from tests.graph_emulator.conftest import ALICE, Call
from tests.graph_emulator.direct import sample, samples_available

DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
SOURCE = "https://contoso.sharepoint.com/sites/sales/Shared%20Documents/Sales%20Invoice.docx"
needs_samples = pytest.mark.skipif(
    not samples_available() and not os.environ.get("CI"), reason="../shared/graph-samples"
)


def with_reference(graph: GraphEmulator) -> tuple[Item, Attachment]:
    """A message in Alice's inbox with one reference attachment, made in the store directly:
    MIME has no form for one (Outlook sends the link in the body)."""
    message = EmailMessage()
    message["From"] = "Dana Swope <dana@example.com>"
    message["To"] = ALICE
    message["Subject"] = "The invoice template"
    message.set_content("Linked, not attached.")
    store = graph.store
    item = store.parse(message.as_bytes())
    attachment = Attachment(
        attachment_id=store.new_attachment_id(),
        name="Sales Invoice Template.docx",
        content_type=DOCX,
        is_inline=True,
        last_modified=datetime(2019, 4, 2, 2, 58, 11, tzinfo=UTC),
        source_url=SOURCE,
        provider="oneDriveBusiness",
    )
    item.attachments.append(attachment)
    mailbox = store.mailbox(ALICE)
    assert mailbox is not None
    store.file(store.folder_by_path(mailbox, "inbox"), item)
    return item, attachment


def path_of(item: Item, attachment: Attachment) -> str:
    return (
        f"users/{ALICE}/messages/{to_rest_id(item.item_id)}"
        f"/attachments/{to_rest_id(attachment.attachment_id)}"
    )


@needs_samples
def test_a_reference_attachment_is_shaped_as_the_docs(graph: GraphEmulator, call: Call) -> None:
    """GET gives the sample's keys in its order: @odata.type referenceAttachment and the base
    attachment properties (v1.0 types no sourceUrl or providerType on it); listing agrees."""
    item, attachment = with_reference(graph)
    answer = call("GET", path_of(item, attachment))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    documented = sample("attachment-get-reference.http.txt")
    assert list(body) == list(documented)
    assert (
        body["@odata.type"] == documented["@odata.type"] == "#microsoft.graph.referenceAttachment"
    )
    assert body["@odata.context"].endswith("/attachments/$entity")
    expected = {
        "name": "Sales Invoice Template.docx",
        "contentType": DOCX,
        "isInline": True,
        "lastModifiedDateTime": "2019-04-02T02:58:11Z",
        "id": to_rest_id(attachment.attachment_id),
    }
    assert {key: body[key] for key in expected} == expected
    assert isinstance(body["size"], int)
    assert body["size"] > 0
    listed = call("GET", f"users/{ALICE}/messages/{to_rest_id(item.item_id)}/attachments")
    assert listed.json()["value"] == [{k: v for k, v in body.items() if k != "@odata.context"}]


def test_a_reference_attachments_value_is_405(graph: GraphEmulator, call: Call) -> None:
    """$value of a reference attachment is 405 in the ODataError shape; the message's own
    $value (its MIME) is unaffected."""
    item, attachment = with_reference(graph)
    answer = call("GET", f"{path_of(item, attachment)}/$value")
    assert answer.status_code == 405
    assert set(answer.json()["error"]) == {"code", "message", "innerError"}
    mime = call("GET", f"users/{ALICE}/messages/{to_rest_id(item.item_id)}/$value")
    assert mime.status_code == 200
    assert b"The invoice template" in mime.content
