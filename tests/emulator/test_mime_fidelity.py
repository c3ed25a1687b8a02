"""MIME → item conversion keeps what a message carries (issue 11, point 19), through exchangelib."""

from __future__ import annotations

from exchangelib import FileAttachment, Message

from ews_listener_emulators.server import EwsEmulator
from listener.sources.ews._convert import to_message
from tests.emulator.conftest import ALICE, AccountFactory

HEAD = (
    "From: Sender Person <sender@example.net>\r\nTo: alice@contoso.com\r\n"
    "Message-ID: <{mid}@example.net>\r\nDate: Mon, 01 Jan 2024 10:00:00 +0000\r\n"
    "MIME-Version: 1.0\r\n"
)


def _mixed(mid: str, *parts: str, subject: str = "parts") -> bytes:
    body = "".join(f"--b\r\n{part}\r\n" for part in parts)
    return (
        HEAD.format(mid=mid)
        + f"Subject: {subject}\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n{body}--b--\r\n"
    ).encode()


def _only(make_account: AccountFactory) -> Message:
    (item,) = make_account().inbox.all()
    assert isinstance(item, Message)
    return item


def _files(item: Message) -> dict[str, bytes]:
    return {a.name: a.content for a in item.attachments if isinstance(a, FileAttachment)}


def test_named_text_part_is_an_attachment(emu: EwsEmulator, make_account: AccountFactory) -> None:
    """``text/plain; name="msg.txt"`` without a disposition is an attachment, not the body."""
    emu.deliver(
        ALICE,
        _mixed(
            "named",
            'Content-Type: text/plain; name="msg.txt"\r\n\r\nattached text',
            "Content-Type: text/plain\r\n\r\nthe body",
        ),
    )
    item = _only(make_account)
    assert item.text_body.strip() == "the body"
    assert _files(item) == {"msg.txt": b"attached text"}


def test_text_part_after_an_attachment_is_kept_as_att00001(
    emu: EwsEmulator, make_account: AccountFactory
) -> None:
    """A list footer after an attachment becomes ATT00001.txt (Exchange's name), not lost."""
    emu.deliver(
        ALICE,
        _mixed(
            "footer",
            "Content-Type: text/plain\r\n\r\nthe body",
            "Content-Type: application/pdf\r\nContent-Disposition: attachment; "
            'filename="a.pdf"\r\n\r\n%PDF',
            "Content-Type: text/plain\r\n\r\n-- list footer",
            "Content-Type: text/html\r\n\r\n<p>html footer</p>",
        ),
    )
    item = _only(make_account)
    assert item.text_body.strip() == "the body"
    assert _files(item) == {
        "a.pdf": b"%PDF",
        "ATT00001.txt": b"-- list footer",
        "ATT00002.htm": b"<p>html footer</p>",
    }


def test_address_less_senders_keep_their_names(
    emu: EwsEmulator, make_account: AccountFactory
) -> None:
    """``From: foo``, ``MAILER DAEMON <>`` and a bare phrase keep a name instead of no sender."""
    for n, sender in enumerate(["foo", "MAILER DAEMON <>", "Mail Delivery System"]):
        raw = (
            HEAD.format(mid=f"s{n}").replace("Sender Person <sender@example.net>", sender)
            + f"Subject: s{n}\r\nContent-Type: text/plain\r\n\r\nbody\r\n"
        ).encode()
        emu.deliver(ALICE, raw)
    items = {i.subject: i for i in make_account().inbox.all()}
    senders = {s: (i.sender.name, i.sender.email_address) for s, i in items.items()}
    assert senders == {
        "s0": ("foo", None),
        "s1": ("MAILER DAEMON", None),
        "s2": ("Mail Delivery System", None),
    }
    assert items["s1"].author.name == "MAILER DAEMON"
    # The listener's event keeps the name too (listener/sources/ews/_convert.py).
    event = to_message(items["s1"], mailbox=ALICE, folder="inbox")
    assert event.sender is not None
    assert (event.sender.name, event.sender.email) == ("MAILER DAEMON", "")
    assert event.from_ == event.sender


def test_folded_subject_keeps_its_tab(emu: EwsEmulator, make_account: AccountFactory) -> None:
    """Unfolding removes the line break only: ``a<CRLF><TAB>b  c`` is ``a<TAB>b  c``."""
    raw = (
        HEAD.format(mid="fold")
        + "Subject: Quarterly\r\n\treport  (draft)\r\nContent-Type: text/plain\r\n\r\nbody\r\n"
    ).encode()
    emu.deliver(ALICE, raw)
    assert _only(make_account).subject == "Quarterly\treport  (draft)"
