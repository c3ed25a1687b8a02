"""The hostile and odd mail corpus through the real pipeline (issue 6, item 2).

Every case is delivered into one mailbox between two normal messages and handed over in one poll
(see ``conftest.corpus_run``) to a recording ``python`` handler and a ``directory`` handler that
also writes attachments. For each case the event must be right (subject decoded, sender,
attachment names as sent, sizes, the ``.eml`` byte for byte) or the item dead-lettered with a
clear reason; the batch must go on; nothing may be written outside the directory handler's folder.
"""

from __future__ import annotations

import email
import email.errors
import email.utils
import hashlib
import json
import unicodedata
from email import policy
from email.message import Message as EmailMessageBase
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import pkcs7

from ews_listener_emulators.server import EwsEmulator
from listener.model import Message, idempotency_key
from listener.store import open_store
from tests.corpus import messages
from tests.corpus.conftest import CorpusRun, emulated, poll_once
from tests.corpus.messages import (
    BIG_ATTACHMENT_SIZE,
    HOSTILE_NAMES,
    MAILBOX,
    NESTING,
    NORMAL,
    RECIPIENTS,
)


def _names() -> list[str]:
    # The parametrisation needs the names at collection time without building 25 MB: they are
    # the builders' names, in delivery order (kept in step with ``build_corpus`` by a test).
    hostile = [
        "unterminated_boundary",
        "bad_headers",
        "missing_message_id",
        "duplicate_a",
        "duplicate_b",
        "huge_header_block",
        "huge_single_header",
        "many_recipients",
        "big_attachment",
        "hostile_names",
        "latin1",
        "unknown_charset",
        "broken_base64",
        "deeply_nested",
        "html_bomb",
        "smime_signed",
        "smime_encrypted",
        "meeting_request",
        "ndr",
        "read_receipt",
        "attached_message",
        "empty_body",
    ]
    names = [f"{NORMAL}-0"]
    for n, name in enumerate(hostile, start=1):
        names += [name, f"{NORMAL}-{n}"]
    return names


ALL = _names()
HOSTILE = [n for n in ALL if not n.startswith(NORMAL)]


def _parsed(raw: bytes) -> EmailMessageBase:
    return email.message_from_bytes(raw, policy=policy.compat32)


def _view_subject(ews: EwsEmulator, item_id: str) -> str:
    views = [v for v in ews.items(MAILBOX) if v.item_id == item_id]
    assert len(views) == 1
    return views[0].subject


def _written(run: CorpusRun, name: str) -> dict[str, bytes]:
    """File name -> content of the attachments the directory handler wrote for case ``name``."""
    folder = run.attachment_dir(name)
    return {p.name: p.read_bytes() for p in folder.iterdir()}


# --- the batch as a whole ----------------------------------------------------------------------


def test_corpus_names_match_the_builder(corpus_run: CorpusRun) -> None:
    """The parametrised names are exactly the corpus, in delivery order."""
    assert [c.name for c in corpus_run.corpus.cases] == ALL


def test_the_poll_hands_over_the_whole_batch(corpus_run: CorpusRun) -> None:
    """One poll hands over every case, hostile or not, and stops for none of them."""
    run = corpus_run
    assert run.first.ok, run.first.error
    assert run.first.handed_over == len(ALL)
    assert (run.first.failed, run.first.dead_lettered, run.first.gone) == (0, 0, 0)
    assert run.dead == []
    assert run.pending == 0


def test_each_case_is_handed_over_once_in_delivery_order(corpus_run: CorpusRun) -> None:
    """The recorder got one event per case, in the order the cases were delivered."""
    by_id = {v: k for k, v in corpus_run.item_ids.items()}
    assert [by_id[m.item_id] for m in corpus_run.received] == ALL


@pytest.mark.parametrize("name", [n for n in ALL if n.startswith(NORMAL)])
def test_normal_messages_between_hostile_ones_are_intact(corpus_run: CorpusRun, name: str) -> None:
    """Each normal message next to a hostile one arrives with its subject, sender and body."""
    n = int(name.rsplit("-", 1)[1])
    message = corpus_run.message(name)
    assert message.subject == f"Normal message {n}"
    assert message.from_ is not None
    assert (message.from_.email, message.from_.name) == ("sender@example.net", "Sender Person")
    assert message.text_body is not None
    assert message.text_body.strip() == f"Plain body number {n}."
    assert message.internet_message_id == f"<{name}@corpus.example>"


def test_a_second_poll_repeats_nothing(corpus_run: CorpusRun) -> None:
    """Right after, a second poll finds nothing new and hands nothing over again."""
    second = corpus_run.second
    assert second.ok, second.error
    assert (second.handed_over, second.already_done, second.dead_lettered) == (0, 0, 0)
    keys = [(e.idempotency_key, e.handler) for e in corpus_run.ledger]
    assert len(keys) == len(set(keys)) == 2 * len(ALL)


def test_every_case_is_marked_read(corpus_run: CorpusRun) -> None:
    """after_success ran for the whole batch: every delivered item is read in the mailbox."""
    views = {v.item_id: v for v in corpus_run.ews.items(MAILBOX)}
    assert all(views[item_id].is_read for item_id in corpus_run.item_ids.values())


@pytest.mark.parametrize("name", ALL)
def test_eml_is_the_message_as_sent(corpus_run: CorpusRun, name: str) -> None:
    """The directory handler's .eml (from ``mime()``) is the delivered message, byte for byte."""
    assert corpus_run.eml(name) == corpus_run.corpus.case(name).raw


@pytest.mark.parametrize("name", ALL)
def test_json_is_the_event_the_handler_got(corpus_run: CorpusRun, name: str) -> None:
    """The directory handler's .json equals the event the recording handler received."""
    message = corpus_run.message(name)
    assert corpus_run.event_json(name) == json.loads(message.to_json())
    assert Message.model_validate(corpus_run.event_json(name)) == message


@pytest.mark.parametrize("name", HOSTILE)
def test_subject_sender_and_item_class(corpus_run: CorpusRun, name: str) -> None:
    """Subject, sender address and item class of every case come through as Exchange (the
    emulator) has them, and as sent where the sender's bytes are unambiguous."""
    case = corpus_run.corpus.case(name)
    message = corpus_run.message(name)
    assert message.subject == _view_subject(corpus_run.ews, message.item_id)
    if case.subject:
        assert message.subject == case.subject
    assert message.item_class == case.item_class
    sent_from = email.utils.parseaddr(str(_parsed(case.raw)["From"]))[1]
    assert message.from_ is not None
    assert message.from_.email == sent_from


def test_directory_handler_never_writes_outside_its_folder(corpus_run: CorpusRun) -> None:
    """Walking the test's whole tree finds only the handler's files in its folder, all harmless."""
    root, out = corpus_run.root, corpus_run.out
    outside = {
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and not p.is_relative_to(out)
    }
    expected = {"config.toml", "state.db", "state.db-wal", "state.db-shm"}
    assert {p for p in outside if not p.startswith("ca/")} <= expected
    for leaked in ("/tmp/corpus-escape.sh", "/etc/corpus-absolute.conf"):
        assert not Path(leaked).exists()
    keys = {m.idempotency_key for m in corpus_run.received}
    for entry in out.iterdir():
        stem, _, kind = entry.name.partition(".")
        assert stem in keys, entry.name
        assert kind in {"eml", "json", "attachments"}, entry.name
        assert not entry.is_symlink()
        if kind == "attachments":
            for file in entry.iterdir():
                assert file.is_file(), file
                assert not file.is_symlink(), file
                assert not file.name.startswith(".")
                assert len(file.name.encode()) <= 255
                assert all(unicodedata.category(c) not in {"Cc", "Cf"} for c in file.name)
                assert "/" not in file.name
                assert "\\" not in file.name


WITH_FILES = [
    "unterminated_boundary",
    "hostile_names",
    "deeply_nested",
    "smime_signed",
    "smime_encrypted",
]


@pytest.mark.parametrize("name", WITH_FILES)
def test_attachments_have_the_names_and_sizes_as_sent(corpus_run: CorpusRun, name: str) -> None:
    """Every file attachment keeps its name as sent and its size, and is written intact."""
    case = corpus_run.corpus.case(name)
    message = corpus_run.message(name)
    files = [a for a in message.attachments if a.kind == "file"]
    assert case.attachments
    assert {a.name: a.size for a in files} == {n: len(c) for n, c in case.attachments.items()}
    assert message.has_attachments
    assert sorted(_written(corpus_run, name).values()) == sorted(case.attachments.values())


# --- one test per kind of hostility ------------------------------------------------------------


def test_unterminated_boundary(corpus_run: CorpusRun) -> None:
    """The part before the cut is the body; the unterminated last part is still an attachment."""
    message = corpus_run.message("unterminated_boundary")
    assert message.text_body is not None
    assert message.text_body.strip() == "The text before the cut."
    assert [(a.name, a.content_type) for a in message.attachments] == [
        ("cut.bin", "application/octet-stream")
    ]


def test_bad_headers(corpus_run: CorpusRun) -> None:
    """Junk addresses are dropped, the real ones kept; a header line without colon ends the
    header block (the rest is body), and the message is handed over anyway."""
    message = corpus_run.message("bad_headers")
    assert message.sender is not None
    assert message.sender.email == "sender@example.net"
    assert [a.email for a in message.to] == [MAILBOX]
    assert message.internet_message_id == "<bad-headers@corpus.example>"
    # Raw 8-bit bytes that are not UTF-8 become U+FFFD, never undecodable surrogates.
    assert message.header("X-Eight-Bit") == "caf\ufffd cr\ufffdme \ufffd\ufffd"
    assert message.header("Date") == "the day after tomorrow, probably"
    assert message.sent_at is None
    assert message.header("X-After-Junk") is None
    assert message.text_body is not None
    assert message.text_body.startswith("this header line has no colon at all")


def test_missing_message_id(corpus_run: CorpusRun) -> None:
    """Without a Message-ID the key is built from what a move keeps, not from the item id."""
    message = corpus_run.message("missing_message_id")
    assert message.internet_message_id is None
    assert message.idempotency_key == idempotency_key(message)
    moved = Message.model_validate(
        {**message.to_dict(), "item_id": "AAMk-moved", "folder": "Archive", "idempotency_key": ""}
    )
    assert moved.idempotency_key == message.idempotency_key


def test_duplicate_message_id_both_handed_over(corpus_run: CorpusRun) -> None:
    """Two different messages sharing one Message-ID are two hand-overs with two keys."""
    a, b = corpus_run.message("duplicate_a"), corpus_run.message("duplicate_b")
    assert a.internet_message_id == b.internet_message_id == "<same-id-twice@corpus.example>"
    assert a.item_id != b.item_id
    assert a.idempotency_key != b.idempotency_key
    assert (a.subject, b.subject) == ("Duplicate Message-ID a", "Duplicate Message-ID b")
    assert corpus_run.eml("duplicate_a") != corpus_run.eml("duplicate_b")


def test_huge_header_block(corpus_run: CorpusRun) -> None:
    """5,000 headers (500 KB) arrive complete and in order."""
    message = corpus_run.message("huge_header_block")
    fillers = [(k, v) for k, v in message.headers if k.startswith("X-Filler-")]
    assert fillers == [(f"X-Filler-{i:04d}", f"{i:04d}-" + "x" * 79) for i in range(5000)]


def test_huge_single_header(corpus_run: CorpusRun) -> None:
    """One 100 KB folded header arrives whole (unfolded)."""
    value = corpus_run.message("huge_single_header").header("X-Huge")
    assert value is not None
    assert " ".join(value.split()) == messages.huge_header_value()
    assert len(value) > 100_000


def test_ten_thousand_recipients(corpus_run: CorpusRun) -> None:
    """All 10,000 To recipients are in the event, in order."""
    to = corpus_run.message("many_recipients").to
    assert [a.email for a in to] == [f"r{i:05d}@recipients.example" for i in range(RECIPIENTS)]


def test_25_mb_attachment(corpus_run: CorpusRun) -> None:
    """The 25 MB attachment has its size in the event and is written byte for byte."""
    message = corpus_run.message("big_attachment")
    [attachment] = message.attachments
    assert (attachment.name, attachment.content_type) == ("big.zip", "application/zip")
    assert attachment.size == BIG_ATTACHMENT_SIZE
    written = corpus_run.attachment_dir("big_attachment") / "big.zip"
    assert written.stat().st_size == BIG_ATTACHMENT_SIZE
    digest = hashlib.sha256(written.read_bytes()).hexdigest()
    assert digest == corpus_run.corpus.big_sha256


def test_hostile_attachment_names(corpus_run: CorpusRun) -> None:
    """The event keeps the names as sent; the files get harmless names inside the folder."""
    message = corpus_run.message("hostile_names")
    assert tuple(a.name for a in message.attachments) == HOSTILE_NAMES
    written = _written(corpus_run, "hostile_names")
    assert len(written) == len(HOSTILE_NAMES)
    names = set(written)
    assert "corpus-escape.sh" in names
    assert "corpus-absolute.conf" in names
    assert "corpus-win.ini" in names
    assert "invoicetxt.exe" in names  # the right-to-left override is gone
    assert "_CON.txt" in names  # a Windows device name is defused


def test_latin1(corpus_run: CorpusRun) -> None:
    """An ISO-8859-1 subject, sender name and 8-bit body are decoded."""
    message = corpus_run.message("latin1")
    assert message.subject == "Grüße aus Köln"
    assert message.from_ is not None
    assert message.from_.name == "Jürgen Müller"
    assert message.text_body is not None
    assert message.text_body.strip() == "Schöne Grüße, 10 Euro? Nein: 10 Mark."


def test_unknown_charset(corpus_run: CorpusRun) -> None:
    """An unknown charset does not stop the message: the body is read as UTF-8, the subject
    stays the undecodable encoded word rather than turning into nothing."""
    message = corpus_run.message("unknown_charset")
    assert message.text_body is not None
    assert message.text_body.strip() == "naïve café"
    assert message.subject == "=?x-unknown?Q?caf=C3=A9?="


def test_broken_base64(corpus_run: CorpusRun) -> None:
    """Broken base64 is decoded leniently, as a standard parser does, instead of failing."""
    raw = corpus_run.corpus.case("broken_base64").raw
    parts = _parsed(raw).get_payload()
    assert isinstance(parts, list)
    body, attachment = parts
    assert isinstance(body, EmailMessageBase)
    assert isinstance(attachment, EmailMessageBase)
    message = corpus_run.message("broken_base64")
    expected_text = body.get_payload(decode=True)
    assert isinstance(expected_text, bytes)
    assert message.text_body == expected_text.decode("utf-8", "replace")
    written = _written(corpus_run, "broken_base64")
    assert written == {"broken.bin": attachment.get_payload(decode=True)}
    assert message.attachments[0].size == len(written["broken.bin"])


def test_deeply_nested_multiparts(corpus_run: CorpusRun) -> None:
    """The body and the attachment at the bottom of 60 nested multiparts are found."""
    part: EmailMessageBase = _parsed(corpus_run.corpus.case("deeply_nested").raw)
    depth = 0
    while part.is_multipart():
        depth += 1
        children = part.get_payload()
        assert isinstance(children, list)
        first = children[0]
        assert isinstance(first, EmailMessageBase)
        part = first
    assert depth == NESTING
    message = corpus_run.message("deeply_nested")
    assert message.text_body is not None
    assert message.text_body.strip() == "Deep down."
    assert [a.name for a in message.attachments] == ["deep.bin"]
    assert _written(corpus_run, "deeply_nested") == {"deep.bin": b"deep bytes\n"}


def test_html_bomb(corpus_run: CorpusRun) -> None:
    """A 2 MB HTML body nested 100,000 deep is carried as text, whole, and never parsed."""
    message = corpus_run.message("html_bomb")
    assert message.html_body is not None
    expected = messages.html_bomb_body()
    assert message.html_body.replace("\r\n", "\n") == expected
    assert message.text_body is not None
    assert message.text_body.strip() == "The HTML part is huge."


def test_smime_signed(corpus_run: CorpusRun) -> None:
    """The signed text is the body, the detached signature an attachment with its exact bytes;
    the .eml test proves the signed part is unchanged, so the signature still verifies."""
    message = corpus_run.message("smime_signed")
    assert message.text_body is not None
    assert message.text_body.strip() == "Signed text."
    [signature] = message.attachments
    assert (signature.name, signature.content_type) == ("smime.p7s", "application/pkcs7-signature")
    raw = corpus_run.corpus.case("smime_signed").raw
    assert b'protocol="application/pkcs7-signature"' in raw


def test_smime_encrypted(corpus_run: CorpusRun) -> None:
    """The enveloped data is one attachment, and what was written decrypts to the plaintext."""
    message = corpus_run.message("smime_encrypted")
    [envelope] = message.attachments
    assert (envelope.name, envelope.content_type) == ("smime.p7m", "application/pkcs7-mime")
    assert not message.html_body
    identity = corpus_run.corpus.smime
    data = (corpus_run.attachment_dir("smime_encrypted") / "smime.p7m").read_bytes()
    plain = pkcs7.pkcs7_decrypt_der(data, identity.certificate, identity.key, [])
    assert plain == corpus_run.corpus.smime_plaintext


def test_meeting_request(corpus_run: CorpusRun) -> None:
    """A meeting request is handed over as an event with its item class and text."""
    message = corpus_run.message("meeting_request")
    assert message.item_class == "IPM.Schedule.Meeting.Request"
    assert message.subject == "Invitation: Quarterly review"
    assert message.text_body is not None
    assert "quarterly review" in message.text_body
    assert b"METHOD:REQUEST" in corpus_run.eml("meeting_request")


def test_non_delivery_report(corpus_run: CorpusRun) -> None:
    """An NDR keeps its item class, its text, and the bounced message as an .eml attachment."""
    message = corpus_run.message("ndr")
    assert message.item_class == "REPORT.IPM.Note.NDR"
    assert message.from_ is not None
    assert message.from_.email == "MAILER-DAEMON@corpus.example"
    assert message.text_body is not None
    assert "delivery-status report" in message.text_body
    [original] = message.attachments
    assert (original.kind, original.name) == ("item", "Your order.eml")
    written = _written(corpus_run, "ndr")
    assert list(written) == ["Your order.eml"]
    assert _parsed(written["Your order.eml"])["Subject"] == "Your order"


def test_read_receipt(corpus_run: CorpusRun) -> None:
    """A read receipt is handed over with its item class; the machine part is in the .eml."""
    message = corpus_run.message("read_receipt")
    assert message.item_class == "REPORT.IPM.Note.IPNRN"
    assert message.subject == "Read: Normal message 1"
    assert b"Disposition: manual-action/MDN-sent-manually" in corpus_run.eml("read_receipt")


def test_attached_message(corpus_run: CorpusRun) -> None:
    """A message/rfc822 part is an item attachment, written as an .eml with its own file."""
    message = corpus_run.message("attached_message")
    [attached] = message.attachments
    assert (attached.kind, attached.content_type) == ("item", "message/rfc822")
    assert attached.name == "The original message.eml"
    written = _written(corpus_run, "attached_message")
    inner = _parsed(written["The original message.eml"])
    assert inner["Subject"] == "The original message"
    assert [p.get_filename() for p in inner.walk() if p.get_filename()] == ["inner.pdf"]


def test_empty_body(corpus_run: CorpusRun) -> None:
    """A message of headers only is handed over with no body and no attachments."""
    message = corpus_run.message("empty_body")
    assert not message.text_body
    assert message.html_body is None
    assert message.attachments == ()
    assert not message.has_attachments


# --- what once broke the emulator ----------------------------------------------------------


def test_control_characters_in_names_do_not_block_the_mailbox(tmp_path: Path) -> None:
    """NUL and control characters in attachment names: handed over or dead-lettered, and the
    normal messages around it are handed over."""
    cases = [messages.normal(0), messages.control_names(), messages.normal(1)]
    with emulated(tmp_path) as (ca, tokens, ews):
        ids = [ews.deliver(MAILBOX, c.raw, item_class=c.item_class) for c in cases]
        result, received = poll_once(tmp_path, ca, tokens, ews)
    assert result.ok, result.error
    got = {m.item_id for m in received}
    assert {ids[0], ids[2]} <= got
    if ids[1] not in got:
        store = open_store(f"sqlite:///{tmp_path / 'state.db'}", create=False)
        try:
            [letter] = store.dead_letters()
        finally:
            store.close()
        assert letter.error


def test_broken_base64_encoded_word_can_be_delivered() -> None:
    """A subject whose encoded word is not base64 is filed like any other message."""
    ews = EwsEmulator(None)
    ews.add_mailbox(MAILBOX)
    case = messages.broken_base64_encoded_word()
    item_id = ews.deliver(MAILBOX, case.raw)
    assert "Hello world" in _view_subject(ews, item_id)
