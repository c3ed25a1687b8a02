"""Realistic sample mail for demos and tests, built with the standard ``email`` package.

``SampleFactory(seed)`` makes a deterministic sequence of RFC 5322 messages of several shapes:
plain text, HTML with a text alternative, a PDF and a CSV attachment, an inline image referenced
by ``cid:``, a forwarded message attached as ``message/rfc822``, and non-ASCII subjects and
display names in several scripts (encoded words and UTF-8 bodies, as real clients send them).
``seed_demo`` fills two demo mailboxes; ``Feeder`` keeps delivering at a given rate from a thread.

The emulator is reached through the small ``Deliverer`` protocol, so this module does not depend
on the server and the factory is usable to write .eml files on its own.
"""

from __future__ import annotations

import random
import struct
import threading
import zlib
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime
from typing import Protocol

__all__ = [
    "DEMO_MAILBOXES",
    "SHAPES",
    "Deliverer",
    "Feeder",
    "SampleFactory",
    "rng_for",
    "seed_demo",
    "tiny_png",
]

DEMO_MAILBOXES = ("orders@demo.example", "support@demo.example")

#: The message shapes the factory cycles through (``SampleFactory.message(shape=…)``).
SHAPES = (
    "order_text",
    "newsletter_html",
    "invoice_pdf",
    "inline_image",
    "forwarded",
    "report_csv",
)

# Senders and subjects in several scripts: the listener must survive RFC 2047 encoded words,
# UTF-8 bodies and non-Latin display names, so the demo shows them from the first message.
_SENDERS = (
    ("Zoë Lefèvre", "zoe.lefevre@patisserie.example"),
    ("Jürgen Groß", "juergen.gross@lieferant.example"),
    ("Анна Кузнецова", "anna@magazin.example"),
    ("山田 太郎", "taro.yamada@shop.example"),
    ("María José Núñez", "mj.nunez@cliente.example"),
    ("Alex Smith", "alex.smith@customer.example"),
)
_SUBJECTS = {
    "order_text": ("Crème brûlée für Zoë", "Заказ №{n}", "注文の確認 #{n}", "Order #{n} confirmed"),
    "newsletter_html": ("Neuigkeiten aus der Backstube", "Our spring catalogue is here"),
    "invoice_pdf": ("Invoice INV-{n}", "Rechnung Nr. {n}"),
    "inline_image": ("Photo of the damaged parcel #{n}", "Снимок экрана: ошибка {n}"),
    "forwarded": ("Fwd: Question about order {n}", "WG: Rückfrage zu Bestellung {n}"),
    "report_csv": ("Daily sales report {n}", "日次レポート {n}"),
}
_ITEMS = ("Crème brûlée", "Croissant", "Pain au chocolat", "Matcha-Torte", "Медовик", "抹茶ロール")


class Deliverer(Protocol):
    """The part of ``EwsEmulator`` the feed uses."""

    def add_mailbox(self, address: str) -> object: ...

    def deliver(self, address: str, raw_mime: bytes, folder: str = "inbox") -> str: ...


def tiny_png(width: int = 8, height: int = 8, rgb: tuple[int, int, int] = (200, 60, 40)) -> bytes:
    """A valid solid-colour PNG (for the inline-image sample; no image library needed)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    row = b"\x00" + bytes(rgb) * width
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(row * height))
        + chunk(b"IEND", b"")
    )


def _tiny_pdf(text: str) -> bytes:
    body = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode("ascii", "replace")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length " + str(len(body)).encode() + b" >>\nstream\n" + body + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, obj in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + obj + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    for offset in offsets:
        out += f"{offset:010d} 00000 n \n".encode()
    out += (
        f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    )
    return bytes(out)


class SampleFactory:
    """A deterministic stream of sample messages: the same seed gives the same bytes.

    ``start`` is the Date of the first message (later ones are a few minutes apart); None uses
    a fixed date so the output is reproducible. ``Feeder`` passes ``clock`` for live dates.
    ``stream`` names the sequence in every Message-ID: the mail ``seed_demo`` seeds and the live
    feed of the same seed are two streams, so the feed's first message does not reuse the
    Message-ID of the first seeded one (the listener then logged ``message.shared_message_id``
    for every demo run).
    """

    def __init__(
        self,
        seed: int = 0,
        *,
        domain: str = "demo.example",
        start: datetime | None = None,
        clock: Callable[[], datetime] | None = None,
        stream: str = "",
    ) -> None:
        self.seed = seed
        self.stream = stream
        self.domain = domain
        self._random = random.Random(seed)
        self._date = start or datetime(2026, 1, 15, 9, 30, tzinfo=UTC)
        self._clock = clock
        self._count = 0
        self._lock = threading.Lock()

    def message(self, to: str, shape: str | None = None) -> bytes:
        """The next message to ``to``, of ``shape`` (one of ``SHAPES``) or a random one."""
        with self._lock:
            self._count += 1
            number = self._count
            rng = self._random
            shape = shape or rng.choice(SHAPES)
            if shape not in SHAPES:
                raise ValueError(f"unknown shape {shape!r}; expected one of {', '.join(SHAPES)}")
            if self._clock is not None:
                date = self._clock()
            else:
                self._date += timedelta(minutes=rng.randint(1, 30), seconds=rng.randint(0, 59))
                date = self._date
            sender = rng.choice(_SENDERS)
            order = 1000 + rng.randint(0, 8999)
            subject = rng.choice(_SUBJECTS[shape]).format(n=order)
            token = f"{self.seed}.{self.stream}{number}.{rng.getrandbits(32):08x}"
        msg = EmailMessage()
        msg["From"] = Address(sender[0], addr_spec=sender[1])
        msg["To"] = to
        msg["Subject"] = subject
        msg["Date"] = format_datetime(date)
        msg["Message-ID"] = f"<{token}@{sender[1].split('@')[1]}>"
        msg["X-Demo-Shape"] = shape
        build = getattr(self, f"_{shape}")
        build(msg, sender[0], order, rng_for(self.seed, number))
        # The email package draws MIME boundaries at random; fixed ones keep the bytes a pure
        # function of the seed.
        multiparts = (p for p in msg.walk() if p.is_multipart())
        for index, part in enumerate(multiparts):
            part.set_boundary(f"=_emu_{self.seed}_{number}_{index}")
        return msg.as_bytes(policy=SMTP)

    def batch(self, to: str) -> list[bytes]:
        """One message of every shape, in ``SHAPES`` order."""
        return [self.message(to, shape) for shape in SHAPES]

    # --- shapes --------------------------------------------------------------------------------

    @staticmethod
    def _order_text(msg: EmailMessage, name: str, order: int, rng: random.Random) -> None:
        lines = [f"{rng.randint(1, 4)} x {rng.choice(_ITEMS)}" for _ in range(rng.randint(1, 3))]
        msg.set_content(
            f"Hallo / Hello,\n\nplease confirm order {order}:\n\n"
            + "\n".join(f"  - {line}" for line in lines)
            + f"\n\nMerci beaucoup,\n{name}\n"
        )

    @staticmethod
    def _newsletter_html(msg: EmailMessage, name: str, order: int, rng: random.Random) -> None:
        item = rng.choice(_ITEMS)
        msg.set_content(f"This week: {item}. Read online at https://demo.example/news/{order}")
        msg.add_alternative(
            "<html><body><h1>Neuigkeiten</h1>"
            f"<p>This week: <b>{item}</b> — 20 % off.</p>"
            f'<p><a href="https://demo.example/news/{order}">Read online</a></p>'
            f"<p>— {name}</p></body></html>",
            subtype="html",
        )

    @staticmethod
    def _invoice_pdf(msg: EmailMessage, name: str, order: int, rng: random.Random) -> None:
        amount = rng.randint(500, 50000) / 100
        msg.set_content(
            f"Please find attached invoice INV-{order} over EUR {amount:.2f}.\n\n{name}"
        )
        msg.add_attachment(
            _tiny_pdf(f"Invoice INV-{order} EUR {amount:.2f}"),
            maintype="application",
            subtype="pdf",
            filename=f"INV-{order}.pdf",
        )

    def _inline_image(self, msg: EmailMessage, name: str, order: int, rng: random.Random) -> None:
        cid = f"photo{order}.{self.seed}@demo.example"
        msg.set_content(f"See the photo of parcel {order} below.\n\n{name}")
        msg.add_alternative(
            f'<html><body><p>See the photo of parcel {order}:</p><img src="cid:{cid}" '
            f'alt="parcel"></p><p>{name}</p></body></html>',
            subtype="html",
        )
        html = msg.get_payload(1)
        assert isinstance(html, EmailMessage)
        colour = (rng.randint(0, 255), rng.randint(0, 255), rng.randint(0, 255))
        html.add_related(
            tiny_png(rgb=colour),
            maintype="image",
            subtype="png",
            cid=f"<{cid}>",
            filename="parcel.png",
            disposition="inline",
        )

    def _forwarded(self, msg: EmailMessage, name: str, order: int, rng: random.Random) -> None:
        original = EmailMessage()
        customer = rng.choice(_SENDERS)
        original["From"] = Address(customer[0], addr_spec=customer[1])
        original["To"] = f"shop@{self.domain}"
        original["Subject"] = f"Frage zu Bestellung {order} — où est mon colis ?"
        original["Date"] = msg["Date"]
        original["Message-ID"] = f"<orig.{order}.{self.seed}@{customer[1].split('@')[1]}>"
        original.set_content(f"Bonjour, my order {order} has not arrived yet. Grüße, {customer[0]}")
        msg.set_content(f"Forwarding the customer's question below.\n\n{name}")
        msg.add_attachment(original, filename=f"order-{order}.eml")

    @staticmethod
    def _report_csv(msg: EmailMessage, name: str, order: int, rng: random.Random) -> None:
        rows = ["item,quantity,revenue"] + [
            f"{item},{rng.randint(1, 90)},{rng.randint(100, 9000) / 10:.1f}" for item in _ITEMS
        ]
        msg.set_content(f"Daily report {order} attached.\n\n{name}")
        msg.add_attachment(
            ("\n".join(rows) + "\n").encode("utf-8"),
            maintype="text",
            subtype="csv",
            filename=f"sales-{order}.csv",
        )


def rng_for(seed: int, number: int) -> random.Random:
    """A random source for one message's content, independent of how many draws others made."""
    return random.Random(seed * 1_000_003 + number)


def seed_demo(
    emulator: Deliverer,
    mailboxes: Sequence[str] = DEMO_MAILBOXES,
    *,
    seed: int = 0,
    per_mailbox: int = len(SHAPES),
) -> dict[str, list[str]]:
    """Create the demo mailboxes and deliver ``per_mailbox`` messages to each inbox.

    Returns the delivered item ids by mailbox. Each mailbox gets every shape once first, so a demo
    shows attachments, an inline image and non-ASCII names straight away.
    """
    factory = SampleFactory(seed)
    delivered: dict[str, list[str]] = {}
    for address in mailboxes:
        emulator.add_mailbox(address)
        ids = delivered.setdefault(address, [])
        for index in range(per_mailbox):
            shape = SHAPES[index] if index < len(SHAPES) else None
            ids.append(emulator.deliver(address, factory.message(address, shape)))
    return delivered


class Feeder:
    """A daemon thread delivering ``rate_per_s`` messages per second, round-robin over mailboxes.

    ``stop()`` ends it promptly (it waits on an Event, not ``sleep``). Delivery errors are counted
    in ``errors`` and the feed goes on, so a reset emulator does not kill a demo.
    """

    def __init__(
        self,
        emulator: Deliverer,
        mailboxes: Sequence[str],
        rate_per_s: float,
        seed: int = 0,
        *,
        limit: int | None = None,
    ) -> None:
        if rate_per_s <= 0:
            raise ValueError(f"rate_per_s must be positive, got {rate_per_s}")
        if not mailboxes:
            raise ValueError("the feed needs at least one mailbox")
        self._emulator = emulator
        self._mailboxes = list(mailboxes)
        self._interval = 1.0 / rate_per_s
        self._limit = limit
        self._factory = SampleFactory(seed, clock=lambda: datetime.now(UTC), stream="feed")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.delivered = 0
        self.errors = 0
        self.last_error: str | None = None

    def start(self) -> Feeder:
        """Start delivering (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="emulator-feed", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop and wait for the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the thread to end by itself (``limit`` reached); True when it has."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return not self.running

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        index = 0
        while not self._stop.is_set():
            address = self._mailboxes[index % len(self._mailboxes)]
            index += 1
            try:
                self._emulator.deliver(address, self._factory.message(address))
                self.delivered += 1
            except Exception as exc:  # keep feeding; the demo must survive a reset mailbox
                self.errors += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
            if self._limit is not None and self.delivered + self.errors >= self._limit:
                return
            self._stop.wait(self._interval)

    def __enter__(self) -> Feeder:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
