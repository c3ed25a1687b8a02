"""Mail for the Graph source tests, built with the standard library."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage
from email.utils import format_datetime

from tests.graph_emulator.conftest import ALICE

_serial = itertools.count(1)


def plain(subject: str = "hello", *, body: str = "body text") -> bytes:
    message = EmailMessage()
    message["From"] = "Carol Sender <carol@example.com>"
    message["To"] = ALICE
    message["Subject"] = subject
    message["Message-ID"] = f"<plain-{next(_serial)}.{subject.replace(' ', '-')}@example.com>"
    message["Date"] = format_datetime(datetime(2024, 1, 1, 10, 0, 7, tzinfo=UTC))
    message.set_content(body)
    return message.as_bytes(policy=policy.SMTP)


def rich(subject: str = "rich", *, attachment: bytes = b"%PDF-1.4 tiny") -> bytes:
    """HTML + text, a file, an inline image named by cid:, an attached message; Cc, Reply-To,
    importance, a custom header."""
    message = EmailMessage()
    message["From"] = "Dora Doe <dora@example.com>"
    message["To"] = f"Alice Example <{ALICE}>, bob@contoso.com"
    message["Cc"] = "Erin <erin@example.com>"
    message["Reply-To"] = "replies@example.com"
    message["Subject"] = subject
    message["Message-ID"] = f"<rich-{next(_serial)}@example.com>"
    message["Date"] = format_datetime(datetime(2024, 2, 3, 4, 5, 6, tzinfo=UTC))
    message["Importance"] = "High"
    message["X-Order-Number"] = "4711"
    message.set_content("Plain rendering\n")
    message.add_alternative(
        '<html><body><p>Hello <b>there</b></p><img src="cid:logo@x"></body></html>', subtype="html"
    )
    html = message.get_payload()[1]
    html.add_related(b"\x89PNG fake", maintype="image", subtype="png", cid="<logo@x>")
    message.add_attachment(attachment, maintype="application", subtype="pdf", filename="a.pdf")
    inner = EmailMessage()
    inner["From"] = "inner@example.com"
    inner["To"] = ALICE
    inner["Subject"] = "the attached one"
    inner["Message-ID"] = f"<inner-{next(_serial)}@example.com>"
    inner.set_content("inner body")
    message.add_attachment(inner)
    return message.as_bytes(policy=policy.SMTP)
