"""MIME delivery, MimeContent, attachments (file, inline, item; 10 MB) and other item types."""

from __future__ import annotations

import email.policy
import os
from email.message import EmailMessage

from exchangelib import FileAttachment, ItemAttachment, Message
from exchangelib.items import MeetingRequest

from ews_listener_emulators.server import EwsEmulator
from tests.emulator.conftest import ALICE, AccountFactory, simple_mime


def _rich_message(attachment: bytes = b"%PDF-1.4 fake") -> bytes:
    inner = EmailMessage()
    inner["From"] = "Dave <dave@example.com>"
    inner["To"] = ALICE
    inner["Subject"] = "Forwarded one"
    inner.set_content("inner body")

    message = EmailMessage()
    message["From"] = "Zoë Müller <zoe@example.com>"
    message["To"] = "Alice Example <alice@contoso.com>"
    message["Cc"] = "Bob <bob@contoso.com>"
    message["Subject"] = "Rechnung für März ✓"
    message["Message-ID"] = "<rich-1@example.com>"
    message["Importance"] = "high"
    message.set_content("plain body")
    message.add_alternative(
        '<html><body><p>html body</p><img src="cid:logo@x"></body></html>', subtype="html"
    )
    html_part = message.get_payload()[1]
    html_part.add_related(b"\x89PNG fake", maintype="image", subtype="png", cid="<logo@x>")
    message.add_attachment(
        attachment, maintype="application", subtype="pdf", filename="invoice.pdf"
    )
    message.add_attachment(inner)
    return message.as_bytes(policy=email.policy.SMTP)


def test_fetch_with_mime_bodies_and_attachments(
    emu: EwsEmulator, make_account: AccountFactory
) -> None:
    """A delivered multipart message comes back with headers, both bodies and all attachments."""
    raw = _rich_message()
    emu.deliver(ALICE, raw)
    account = make_account()
    item = next(iter(account.inbox.all()))
    assert isinstance(item, Message)
    assert item.subject == "Rechnung für März ✓"
    assert item.sender.name == "Zoë Müller"
    assert [r.email_address for r in item.cc_recipients] == ["bob@contoso.com"]
    assert item.importance == "High"
    assert "html body" in item.body
    assert item.text_body.strip() == "plain body"
    assert item.mime_content == raw
    assert item.has_attachments is True
    by_name = {a.name: a for a in item.attachments}
    assert set(by_name) == {"invoice.pdf", "logo@x", "Forwarded one"}
    logo = by_name["logo@x"]
    assert isinstance(logo, FileAttachment)
    assert (logo.content_id, logo.is_inline) == ("logo@x", True)
    pdf = by_name["invoice.pdf"]
    assert isinstance(pdf, FileAttachment)
    assert pdf.content == b"%PDF-1.4 fake"
    forwarded = by_name["Forwarded one"]
    assert isinstance(forwarded, ItemAttachment)
    assert forwarded.item.subject == "Forwarded one"
    assert forwarded.item.body.strip() == "inner body"


def test_ten_megabyte_attachment(emu: EwsEmulator, make_account: AccountFactory) -> None:
    """GetAttachment returns a 10 MB file attachment intact."""
    payload = os.urandom(10 * 1024 * 1024)
    emu.deliver(ALICE, _rich_message(payload))
    item = next(iter(make_account().inbox.all().only("attachments")))
    pdf = next(a for a in item.attachments if a.name == "invoice.pdf")
    assert pdf.size == len(payload)
    assert pdf.content == payload


def test_meeting_request_and_ndr_item_types(emu: EwsEmulator, make_account: AccountFactory) -> None:
    """Meeting requests come back as MeetingRequest; NDRs as messages with their item class."""
    emu.deliver(ALICE, simple_mime("Team sync"), item_class="IPM.Schedule.Meeting.Request")
    emu.deliver(ALICE, simple_mime("Undeliverable: x"), item_class="REPORT.IPM.Note.NDR")
    emu.deliver(ALICE, simple_mime("Read: y"), item_class="REPORT.IPM.Note.IPNRN")
    items = {i.subject: i for i in make_account().inbox.all()}
    assert isinstance(items["Team sync"], MeetingRequest)
    assert items["Undeliverable: x"].item_class == "REPORT.IPM.Note.NDR"
    assert items["Read: y"].item_class == "REPORT.IPM.Note.IPNRN"
    assert {v.item_class for v in emu.items(ALICE)} >= {"REPORT.IPM.Note.NDR"}


def test_item_views_expose_message_ids(emu: EwsEmulator) -> None:
    """items() shows the Internet Message-ID, folder path and read flag of delivered mail."""
    emu.deliver(ALICE, simple_mime("x", message_id="<abc@example.com>"), is_read=True)
    (view,) = emu.items(ALICE, "inbox")
    assert (view.internet_message_id, view.folder, view.is_read) == (
        "<abc@example.com>",
        "Inbox",
        True,
    )
