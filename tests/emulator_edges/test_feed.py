"""The sample feed: valid, varied, deterministic MIME; seed_demo; the Feeder thread."""

from __future__ import annotations

import threading
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser

import pytest

from ews_listener_emulators.feed import (
    DEMO_MAILBOXES,
    SHAPES,
    Feeder,
    SampleFactory,
    seed_demo,
    tiny_png,
)
from ews_listener_emulators.server import EwsEmulator

PARSER = BytesParser(policy=policy.default)


def _parse(raw: bytes) -> EmailMessage:
    message = PARSER.parsebytes(raw)
    assert isinstance(message, EmailMessage)
    return message


def test_same_seed_same_bytes() -> None:
    """Two factories with one seed produce identical messages; another seed differs."""
    first = SampleFactory(3).batch("a@demo.example")
    assert first == SampleFactory(3).batch("a@demo.example")
    assert first != SampleFactory(4).batch("a@demo.example")


@pytest.mark.parametrize("shape", SHAPES)
def test_every_shape_is_valid_mime(shape: str) -> None:
    """Each shape parses without defects and has the headers a listener relies on."""
    raw = SampleFactory(1).message("orders@demo.example", shape)
    message = _parse(raw)
    assert all(not part.defects for part in message.walk())
    assert message["Message-ID"].startswith("<")
    assert message["To"] == "orders@demo.example"
    assert message["X-Demo-Shape"] == shape
    assert all(b < 128 for b in raw.split(b"\r\n\r\n", 1)[0])  # headers are 7-bit (RFC 2047)


def test_shapes_carry_their_parts() -> None:
    """Attachments, the inline image with its Content-ID, and the attached message are there."""
    batch = {m["X-Demo-Shape"]: m for m in map(_parse, SampleFactory(2).batch("x@demo.example"))}
    pdf = next(p for p in batch["invoice_pdf"].iter_attachments())
    assert pdf.get_content_type() == "application/pdf"
    assert pdf.get_content().startswith(b"%PDF-1.4")
    related = next(p for p in batch["inline_image"].walk() if p.get_content_type() == "image/png")
    cid = related["Content-ID"].strip("<>")
    html = next(p for p in batch["inline_image"].walk() if p.get_content_type() == "text/html")
    assert f"cid:{cid}" in html.get_content()
    assert related.get_content().startswith(b"\x89PNG\r\n\x1a\n")
    attached = next(p for p in batch["forwarded"].iter_attachments())
    assert attached.get_content_type() == "message/rfc822"
    assert "Bestellung" in attached.get_content()["Subject"]
    csv = next(p for p in batch["report_csv"].iter_attachments())
    assert csv.get_content().startswith("item,quantity,revenue")
    assert batch["newsletter_html"].get_body(("html",)) is not None


def test_non_ascii_subjects_and_names_round_trip() -> None:
    """Subjects and display names in several scripts decode back to the original text."""
    factory = SampleFactory(0)
    texts = set()
    for _ in range(60):
        message = _parse(factory.message("x@demo.example"))
        texts.add(str(message["Subject"]))
        texts.add(message["From"].addresses[0].display_name)
    assert "Crème brûlée für Zoë" in texts
    assert any("Заказ №" in text for text in texts)
    assert any("注文の確認" in text for text in texts)
    assert "山田 太郎" in texts


def test_seed_demo_fills_two_mailboxes(emulator: EwsEmulator) -> None:
    """seed_demo creates the demo mailboxes and delivers every shape to each inbox."""
    delivered = seed_demo(emulator)
    assert set(delivered) == set(DEMO_MAILBOXES)
    for address in DEMO_MAILBOXES:
        views = emulator.items(address, "inbox")
        assert [v.item_id for v in views] == delivered[address]
        assert len(views) == len(SHAPES)
        assert all(not v.is_read for v in views)


def test_feeder_keeps_delivering_until_stopped(emulator: EwsEmulator) -> None:
    """The Feeder delivers round-robin at its rate and stops promptly."""
    done = threading.Event()

    class Counting:
        def add_mailbox(self, address: str) -> object:
            return emulator.add_mailbox(address)

        def deliver(self, address: str, raw_mime: bytes, folder: str = "inbox") -> str:
            item_id = emulator.deliver(address, raw_mime, folder)
            if sum(len(emulator.items(a)) for a in DEMO_MAILBOXES) >= 6:
                done.set()
            return item_id

    for address in DEMO_MAILBOXES:
        emulator.add_mailbox(address)
    with Feeder(Counting(), DEMO_MAILBOXES, rate_per_s=200, seed=5) as feeder:
        assert done.wait(5)
    assert not feeder.running
    counts = [len(emulator.items(a)) for a in DEMO_MAILBOXES]
    assert min(counts) >= 3
    assert feeder.errors == 0


def test_feeder_survives_delivery_errors(emulator: EwsEmulator) -> None:
    """A missing mailbox is counted as an error and the feed goes on (here: up to its limit)."""
    feeder = Feeder(emulator, ["nobody@demo.example"], rate_per_s=1000, limit=3).start()
    assert feeder.wait(5)
    assert feeder.errors == 3
    assert feeder.delivered == 0
    assert feeder.last_error is not None
    assert "nobody@demo.example" in feeder.last_error


def test_tiny_png_is_a_png() -> None:
    """The generated image has the PNG signature and an IEND chunk."""
    image = tiny_png(4, 4)
    assert image.startswith(b"\x89PNG\r\n\x1a\n")
    assert image.endswith(b"IEND\xaeB`\x82")


def test_the_live_feed_and_the_seeded_mail_do_not_share_message_ids() -> None:
    """The demo seeds mail and then feeds more with the same seed: two streams of Message-IDs
    (they were one, so the listener saw different messages under one Message-ID each demo)."""
    seeded = SampleFactory(7)
    fed = SampleFactory(7, stream="feed")
    ids = {
        _parse(factory.message("a@demo.example"))["Message-ID"]
        for factory in (seeded, fed)
        for _ in range(5)
    }
    assert len(ids) == 10
