"""The hostile and odd mail corpus, generated with the standard ``email`` package (nothing binary
is committed).

Each :class:`Case` is raw RFC 5322 bytes plus the Exchange item class the emulator files it as.
Cases that no ``email`` API would produce on purpose (an unterminated boundary, a header line
without a colon, raw 8-bit header bytes, broken base64) are assembled from bytes by hand; the
others are built with ``EmailMessage`` so the test knows exactly what was sent.

``NORMAL`` cases are plain messages the test delivers between the hostile ones: they prove that
the batch goes on around whatever the hostile ones do.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import random
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from email.utils import encode_rfc2231, format_datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID

__all__ = [
    "BIG_ATTACHMENT_SIZE",
    "CONTROL_NAMES",
    "HOSTILE_NAMES",
    "MAILBOX",
    "NORMAL",
    "RECIPIENTS",
    "SENDER",
    "Case",
    "Corpus",
    "SmimeIdentity",
    "build_corpus",
]

MAILBOX = "corpus@contoso.example"
SENDER = "Sender Person <sender@example.net>"
BIG_ATTACHMENT_SIZE = 25 * 1024 * 1024
RECIPIENTS = 10_000
NORMAL = "normal"

# Names an attacker picks so that a naive ``open(folder / name, "wb")`` lands somewhere else or
# shows the user a name other than the real one (a U+202E right-to-left override makes
# "invoice<U+202E>txt.exe" display as "invoiceexe.txt").
HOSTILE_NAMES = (
    "../../../../tmp/corpus-escape.sh",
    "/etc/corpus-absolute.conf",
    "..\\..\\Windows\\corpus-win.ini",
    "invoice\u202etxt.exe",
    "..",
    "CON.txt",
    "a" * 300 + ".pdf",
    "tab\there.txt",
)
# Characters XML 1.0 cannot carry at all (EWS is XML): NUL and C0 controls. Kept in a message of
# their own, see ``control_names``.
CONTROL_NAMES = ("nul\x00byte.txt", "ctrl\x01\x07\x1b[31m.txt")

_CRLF = policy.SMTP  # CRLF line ends and RFC-conform folding, as a real MTA hands mail over
_DATE = format_datetime(dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.UTC))


@dataclass(frozen=True)
class Case:
    """One message to deliver: ``name`` identifies it in the tests."""

    name: str
    raw: bytes
    item_class: str = "IPM.Note"
    subject: str = ""  # the subject as the reader should see it, decoded ("" when none)
    # name → content of the file attachments as sent (names decoded, bytes decoded)
    attachments: dict[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True)
class SmimeIdentity:
    """The recipient's certificate and key: the test decrypts the enveloped message with them."""

    certificate: x509.Certificate
    key: rsa.RSAPrivateKey


@dataclass(frozen=True)
class Corpus:
    """Every case, in delivery order, and what the test needs to check the cryptographic ones."""

    cases: tuple[Case, ...]
    smime: SmimeIdentity
    smime_plaintext: bytes
    big_sha256: str

    def case(self, name: str) -> Case:
        return next(c for c in self.cases if c.name == name)


def _message(name: str, subject: str, *, message_id: str | None = "") -> EmailMessage:
    msg = EmailMessage(policy=_CRLF)
    msg["From"] = SENDER
    msg["To"] = MAILBOX
    msg["Subject"] = subject
    msg["Date"] = _DATE
    if message_id is not None:
        msg["Message-ID"] = message_id or f"<{name}@corpus.example>"
    return msg


def _case(
    name: str,
    msg: EmailMessage,
    *,
    item_class: str = "IPM.Note",
    attachments: dict[str, bytes] | None = None,
) -> Case:
    subject = str(msg["Subject"] or "")
    return Case(name, msg.as_bytes(), item_class, subject, attachments or {})


def _crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode("ascii")


# --- the plain, hostile-structure and header cases ---------------------------------------------


def normal(n: int) -> Case:
    msg = _message(f"{NORMAL}-{n}", f"Normal message {n}")
    msg.set_content(f"Plain body number {n}.\n")
    return _case(f"{NORMAL}-{n}", msg)


def unterminated_boundary() -> Case:
    """The closing ``--boundary--`` never comes: the last part runs to the end of the data."""
    head = _crlf(
        "From: Sender Person <sender@example.net>\n"
        f"To: {MAILBOX}\n"
        "Subject: Unterminated boundary\n"
        "Message-ID: <unterminated@corpus.example>\n"
        f"Date: {_DATE}\n"
        "MIME-Version: 1.0\n"
        'Content-Type: multipart/mixed; boundary="CUT"\n'
        "\n"
        "--CUT\n"
        "Content-Type: text/plain; charset=utf-8\n"
        "\n"
        "The text before the cut.\n"
        "--CUT\n"
        "Content-Type: application/octet-stream\n"
        'Content-Disposition: attachment; filename="cut.bin"\n'
        "Content-Transfer-Encoding: base64\n"
        "\n"
        "AAECAwQFBgcICQ==\n"
    )
    return Case(
        "unterminated_boundary",
        head,
        subject="Unterminated boundary",
        attachments={"cut.bin": bytes(range(10))},
    )


def bad_headers() -> Case:
    """Broken encoded word, raw 8-bit bytes, a garbage date, an address list with junk, and a
    header line without a colon (which ends the header block for most parsers)."""
    head = (
        _crlf(
            "From: Sender Person <sender@example.net>\n"
            f"To: {MAILBOX}, not an address, <>, @@@\n"
            f"Subject: {BAD_SUBJECT}\n"
            "Message-ID: <bad-headers@corpus.example>\n"
            "Date: the day after tomorrow, probably\n"
            "Sender: \n"
            "X-Empty:\n"
        )
        + b"X-Eight-Bit: caf\xe9 cr\xe8me \xff\xfe\r\n"
        + _crlf("this header line has no colon at all\nX-After-Junk: lost in the body\n\nBody.\n")
    )
    # The good encoded word is decoded, the truncated one is kept as it came (what Exchange shows).
    return Case("bad_headers", head, subject="Hello world then =?utf-8?Q?half=E2=82?=")


# A valid encoded word, then one whose UTF-8 is cut in the middle of a character.
BAD_SUBJECT = "=?utf-8?B?SGVsbG8gd29ybGQ=?= then =?utf-8?Q?half=E2=82?="


def broken_base64_encoded_word() -> Case:
    """A subject whose B encoded word is not base64 at all (kept out of the corpus: the emulator
    cannot file it, see ``test_mail_corpus``). Written as bytes: ``EmailMessage`` would decode
    and re-encode the header on assignment."""
    raw = _crlf(
        "From: Sender Person <sender@example.net>\n"
        f"To: {MAILBOX}\n"
        "Subject: =?utf-8?B?SGVsbG8gd29ybGQ=?= then =?utf-8?B?!!!not-base64?=\n"
        "Message-ID: <broken-encoded-word@corpus.example>\n"
        f"Date: {_DATE}\n"
        "\n"
        "The subject has an encoded word that is not base64.\n"
    )
    return Case("broken_encoded_word", raw)


def missing_message_id() -> Case:
    msg = _message("missing_message_id", "No Message-ID here", message_id=None)
    msg.set_content("This message has no Message-ID header.\n")
    return _case("missing_message_id", msg)


def duplicate_message_id(which: str) -> Case:
    """Two different messages that share one Message-ID (a broken or malicious sender)."""
    msg = _message(f"duplicate_{which}", f"Duplicate Message-ID {which}")
    del msg["Message-ID"]
    msg["Message-ID"] = "<same-id-twice@corpus.example>"
    msg.set_content(f"Copy {which} of two different messages with one Message-ID.\n")
    return _case(f"duplicate_{which}", msg)


def huge_header_block() -> Case:
    """About 500 KB of headers: 5,000 lines of 100 bytes."""
    msg = _message("huge_header_block", "Huge header block")
    for i in range(5000):
        msg[f"X-Filler-{i:04d}"] = f"{i:04d}-" + "x" * 79
    msg.set_content("Below half a megabyte of headers.\n")
    return _case("huge_header_block", msg)


def huge_single_header() -> Case:
    """One 100 KB header, folded into many lines."""
    msg = _message("huge_single_header", "One huge header")
    msg["X-Huge"] = huge_header_value()
    msg.set_content("One header is 100 KB long.\n")
    return _case("huge_single_header", msg)


def huge_header_value() -> str:
    return " ".join(f"w{i:06d}" for i in range(100 * 1024 // 8))


def many_recipients() -> Case:
    msg = _message("many_recipients", f"{RECIPIENTS} recipients")
    del msg["To"]
    msg["To"] = ", ".join(f"r{i:05d}@recipients.example" for i in range(RECIPIENTS))
    msg.set_content("Sent to ten thousand people.\n")
    return _case("many_recipients", msg)


def big_attachment() -> tuple[Case, str]:
    """A 25 MB attachment (seeded pseudo-random bytes: incompressible, reproducible)."""
    data = random.Random(25).randbytes(BIG_ATTACHMENT_SIZE)
    msg = _message("big_attachment", "A 25 MB attachment")
    msg.set_content("See the attached archive.\n")
    msg.add_attachment(data, maintype="application", subtype="zip", filename="big.zip")
    # The bytes are not kept on the case: 25 MB per copy is enough once (in ``raw``).
    return _case("big_attachment", msg), hashlib.sha256(data).hexdigest()


def hostile_names(
    case_name: str = "hostile_names", names: tuple[str, ...] = HOSTILE_NAMES, subject: str = ""
) -> Case:
    """Attachments whose names try path traversal, absolute paths, RTL override and more.

    Names go out RFC 2231-encoded, so every byte of them (even NUL) reaches the receiving parser.
    """
    msg = _message(case_name, subject or "Hostile attachment names")
    msg.set_content("Look at the names of the attachments.\n")
    contents: dict[str, bytes] = {}
    for i, name in enumerate(names):
        data = f"content {i} of {name!r}\n".encode()
        contents[name] = data
        msg.add_attachment(data, maintype="application", subtype="octet-stream")
        parts = msg.get_payload()
        assert isinstance(parts, list)
        part = parts[-1]
        assert isinstance(part, EmailMessage)
        del part["Content-Disposition"]
        part["Content-Disposition"] = "attachment; filename*=" + encode_rfc2231(name, "utf-8")
    return _case(case_name, msg, attachments=contents)


def control_names() -> Case:
    """Attachment names with NUL and C0 control characters."""
    return hostile_names("control_names", CONTROL_NAMES, "Control characters in names")


# --- charsets and transfer encodings ------------------------------------------------------------


def latin1() -> Case:
    """An ISO-8859-1 body in raw 8-bit and an ISO-8859-1 encoded-word subject."""
    raw = _crlf(
        "From: =?iso-8859-1?Q?J=FCrgen_M=FCller?= <juergen@example.net>\n"
        f"To: {MAILBOX}\n"
        "Subject: =?iso-8859-1?Q?Gr=FC=DFe_aus_K=F6ln?=\n"
        "Message-ID: <latin1@corpus.example>\n"
        f"Date: {_DATE}\n"
        "MIME-Version: 1.0\n"
        "Content-Type: text/plain; charset=iso-8859-1\n"
        "Content-Transfer-Encoding: 8bit\n"
        "\n"
    ) + "Schöne Grüße, 10 €uro? Nein: 10 Mark.\r\n".replace("€", "E").encode("iso-8859-1")
    return Case("latin1", raw, subject="Grüße aus Köln")


def unknown_charset() -> Case:
    """A charset nobody knows (``x-unknown``) in the body and in an encoded-word subject."""
    raw = _crlf(
        "From: Sender Person <sender@example.net>\n"
        f"To: {MAILBOX}\n"
        "Subject: =?x-unknown?Q?caf=C3=A9?=\n"
        "Message-ID: <unknown-charset@corpus.example>\n"
        f"Date: {_DATE}\n"
        "MIME-Version: 1.0\n"
        "Content-Type: text/plain; charset=x-unknown\n"
        "Content-Transfer-Encoding: quoted-printable\n"
        "\n"
        "na=C3=AFve caf=C3=A9\n"
    )
    return Case("unknown_charset", raw)


def broken_base64() -> Case:
    """Base64 with characters outside the alphabet and missing padding, in body and attachment."""
    raw = _crlf(
        "From: Sender Person <sender@example.net>\n"
        f"To: {MAILBOX}\n"
        "Subject: Broken base64\n"
        "Message-ID: <broken-base64@corpus.example>\n"
        f"Date: {_DATE}\n"
        "MIME-Version: 1.0\n"
        'Content-Type: multipart/mixed; boundary="B64"\n'
        "\n"
        "--B64\n"
        "Content-Type: text/plain; charset=utf-8\n"
        "Content-Transfer-Encoding: base64\n"
        "\n"
        "SGVsbG8g*d29y!bGQ\n"
        "--B64\n"
        "Content-Type: application/octet-stream\n"
        'Content-Disposition: attachment; filename="broken.bin"\n'
        "Content-Transfer-Encoding: base64\n"
        "\n"
        "AAEC%%%AwQ=FBgc\n"
        "--B64--\n"
    )
    return Case("broken_base64", raw, subject="Broken base64")


# --- structure --------------------------------------------------------------------------------


NESTING = 60


def deeply_nested() -> Case:
    """A text body and an attachment at the bottom of 60 nested ``multipart/mixed`` levels."""
    leaf = EmailMessage(policy=_CRLF)
    leaf.set_content("Deep down.\n")
    leaf.add_attachment(
        b"deep bytes\n", maintype="application", subtype="octet-stream", filename="deep.bin"
    )
    node = leaf
    for _ in range(NESTING - 1):
        outer = EmailMessage(policy=_CRLF)
        outer.make_mixed()
        outer.attach(node)
        node = outer
    msg = _message("deeply_nested", f"{NESTING} nested multiparts")
    msg.make_mixed()
    del msg["Content-Type"]
    msg["Content-Type"] = node["Content-Type"]
    msg.set_payload(node.get_payload())
    return _case("deeply_nested", msg, attachments={"deep.bin": b"deep bytes\n"})


HTML_DEPTH = 100_000


def html_bomb_body() -> str:
    """100,000 nested ``<div>`` and a few MB of markup: a renderer's worst day, a parser's too."""
    return (
        "<html><body>"
        + "<div>" * HTML_DEPTH
        + "<b>bomb</b>"
        + "</div>" * HTML_DEPTH
        + "<p>"
        + "x" * 1_000_000
        + "</p></body></html>\n"
    )


def html_bomb() -> Case:
    msg = _message("html_bomb", "HTML bomb")
    msg.set_content("The HTML part is huge.\n")
    msg.add_alternative(html_bomb_body(), subtype="html")
    return _case("html_bomb", msg)


def empty_body() -> Case:
    """Headers and nothing else: no blank line, no body, no Content-Type."""
    raw = _crlf(
        "From: Sender Person <sender@example.net>\n"
        f"To: {MAILBOX}\n"
        "Subject: Empty body\n"
        "Message-ID: <empty-body@corpus.example>\n"
        f"Date: {_DATE}\n"
    )
    return Case("empty_body", raw, subject="Empty body")


def attached_message() -> Case:
    """A forward as attachment: a ``message/rfc822`` part holding a message with its own file."""
    inner = _message("attached_inner", "The original message")
    inner.set_content("Original text.\n")
    inner.add_attachment(
        b"%PDF-1.4 inner\n", maintype="application", subtype="pdf", filename="inner.pdf"
    )
    msg = _message("attached_message", "Fwd: The original message")
    msg.set_content("Forwarded as an attachment.\n")
    msg.add_attachment(inner)
    return _case("attached_message", msg)


# --- S/MIME ------------------------------------------------------------------------------------


def _smime_identity() -> SmimeIdentity:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.EMAIL_ADDRESS, MAILBOX)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    return SmimeIdentity(cert, key)


_SIGNED_PART = _crlf("Content-Type: text/plain; charset=utf-8\n\nSigned text.\n")


def smime_signed(identity: SmimeIdentity) -> Case:
    """``multipart/signed`` with a detached ``application/pkcs7-signature`` over the first part.

    Built by hand: the signature covers the first part's exact bytes, so any re-encoding on the
    way (a rewritten line end, a re-folded header) would break it; the test checks the ``.eml``
    comes back byte for byte.
    """
    signature = (
        pkcs7.PKCS7SignatureBuilder()
        .set_data(_SIGNED_PART)
        .add_signer(identity.certificate, identity.key, hashes.SHA256())
        .sign(serialization.Encoding.DER, [pkcs7.PKCS7Options.DetachedSignature])
    )
    b64 = base64.encodebytes(signature).decode().replace("\n", "\r\n")
    raw = (
        _crlf(
            "From: Sender Person <sender@example.net>\n"
            f"To: {MAILBOX}\n"
            "Subject: S/MIME signed\n"
            "Message-ID: <smime-signed@corpus.example>\n"
            f"Date: {_DATE}\n"
            "MIME-Version: 1.0\n"
            'Content-Type: multipart/signed; protocol="application/pkcs7-signature";\n'
            ' micalg=sha-256; boundary="SIG"\n'
            "\n"
            "--SIG\n"
        )
        + _SIGNED_PART
        + _crlf(
            "--SIG\n"
            'Content-Type: application/pkcs7-signature; name="smime.p7s"\n'
            "Content-Transfer-Encoding: base64\n"
            'Content-Disposition: attachment; filename="smime.p7s"\n'
            "\n"
        )
        + b64.encode()
        + _crlf("\n--SIG--\n")
    )
    return Case("smime_signed", raw, subject="S/MIME signed", attachments={"smime.p7s": signature})


SMIME_PLAINTEXT = _crlf("Content-Type: text/plain; charset=utf-8\n\nFor your eyes only.\n")


def smime_encrypted(identity: SmimeIdentity) -> Case:
    """``application/pkcs7-mime; smime-type=enveloped-data``: the whole body is one opaque blob."""
    envelope = (
        pkcs7.PKCS7EnvelopeBuilder()
        .set_data(SMIME_PLAINTEXT)
        .add_recipient(identity.certificate)
        .encrypt(serialization.Encoding.DER, [])
    )
    msg = _message("smime_encrypted", "S/MIME encrypted")
    msg.set_content(
        envelope,
        maintype="application",
        subtype="pkcs7-mime",
        params={"smime-type": "enveloped-data", "name": "smime.p7m"},
        disposition="attachment",
        filename="smime.p7m",
    )
    return _case("smime_encrypted", msg, attachments={"smime.p7m": envelope})


# --- Exchange item types ---------------------------------------------------------------------

_ICS = """BEGIN:VCALENDAR
METHOD:REQUEST
PRODID:-//corpus//EN
VERSION:2.0
BEGIN:VEVENT
UID:corpus-meeting-1
DTSTART:20240610T090000Z
DTEND:20240610T100000Z
SUMMARY:Quarterly review
ORGANIZER:mailto:sender@example.net
ATTENDEE;RSVP=TRUE:mailto:{mailbox}
END:VEVENT
END:VCALENDAR
"""


def meeting_request() -> Case:
    msg = _message("meeting_request", "Invitation: Quarterly review")
    msg.set_content("You are invited to the quarterly review.\n")
    msg.add_alternative(
        _ICS.format(mailbox=MAILBOX).replace("\n", "\r\n"),
        subtype="calendar",
        params={"method": "REQUEST"},
    )
    return _case("meeting_request", msg, item_class="IPM.Schedule.Meeting.Request")


def _report(name: str, subject: str, report_type: str, machine: str, original: bytes) -> bytes:
    """A ``multipart/report`` (RFC 6522) as a mail server writes it, assembled from text.

    ``email`` cannot generate a ``message/delivery-status`` part from a string payload (its
    generator wants the parsed header blocks), so this one is written out by hand.
    """
    head = _crlf(
        "From: Mail Delivery System <MAILER-DAEMON@corpus.example>\n"
        f"To: {MAILBOX}\n"
        f"Subject: {subject}\n"
        f"Message-ID: <{name}@corpus.example>\n"
        f"Date: {_DATE}\n"
        "MIME-Version: 1.0\n"
        f'Content-Type: multipart/report; report-type={report_type}; boundary="R"\n'
        "\n"
        "--R\n"
        "Content-Type: text/plain; charset=utf-8\n"
        "\n"
        f"Human-readable part of the {report_type} report.\n"
        "--R\n"
        f"Content-Type: message/{report_type}\n"
        "\n"
        f"{machine}"
    )
    if original:
        head += _crlf("--R\nContent-Type: message/rfc822\n\n") + original
    return head + _crlf("--R--\n")


def non_delivery_report() -> Case:
    original = _message("ndr_original", "Your order")
    original.set_content("The message that bounced.\n")
    machine = (
        "Reporting-MTA: dns; mx.corpus.example\n\n"
        "Final-Recipient: rfc822; nobody@nowhere.example\n"
        "Action: failed\nStatus: 5.1.1\n"
    )
    raw = _report(
        "ndr", "Undeliverable: Your order", "delivery-status", machine, original.as_bytes()
    )
    return Case("ndr", raw, "REPORT.IPM.Note.NDR", "Undeliverable: Your order")


def read_receipt() -> Case:
    machine = (
        "Reporting-UA: corpus.example; Outlook\n"
        "Final-Recipient: rfc822; sender@example.net\n"
        "Original-Message-ID: <normal-1@corpus.example>\n"
        "Disposition: manual-action/MDN-sent-manually; displayed\n"
    )
    raw = _report(
        "read_receipt", "Read: Normal message 1", "disposition-notification", machine, b""
    )
    return Case("read_receipt", raw, "REPORT.IPM.Note.IPNRN", "Read: Normal message 1")


# --- the corpus ------------------------------------------------------------------------------


def build_corpus() -> Corpus:
    """Every case, each hostile one between two normal ones (``normal-N``)."""
    identity = _smime_identity()
    big, big_sha = big_attachment()
    hostile = [
        unterminated_boundary(),
        bad_headers(),
        missing_message_id(),
        duplicate_message_id("a"),
        duplicate_message_id("b"),
        huge_header_block(),
        huge_single_header(),
        many_recipients(),
        big,
        hostile_names(),
        latin1(),
        unknown_charset(),
        broken_base64(),
        deeply_nested(),
        html_bomb(),
        smime_signed(identity),
        smime_encrypted(identity),
        meeting_request(),
        non_delivery_report(),
        read_receipt(),
        attached_message(),
        empty_body(),
    ]
    cases: list[Case] = [normal(0)]
    for n, case in enumerate(hostile, start=1):
        cases += [case, normal(n)]
    return Corpus(tuple(cases), identity, SMIME_PLAINTEXT, big_sha)
